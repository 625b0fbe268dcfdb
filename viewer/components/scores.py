"""The Scores page's boxes: one box per layer for a kind of score, from every point or from the store's quartiles."""

from __future__ import annotations

import plotly.graph_objects as go


def box(trace, name: str, **style) -> go.Box:
    """A kind's scores as one box per layer: every point when the store gave them all, else the store's quartiles,
    fences and the points beyond them (cache.scores.ScoreTrace)."""
    common = dict(name=name, jitter=0.4, pointpos=0, **style)
    if trace.points is not None:
        return go.Box(x=[f"L{u.layer}" for u, _v in trace.points], y=[v for _u, v in trace.points],
                      boxpoints="all", hovertext=[str(u) for u, _v in trace.points], **common)
    b = trace.boxes
    stats = dict(x=[f"L{x.layer}" for x in b], q1=[x.q1 for x in b], median=[x.median for x in b],
                 q3=[x.q3 for x in b], lowerfence=[x.lowerfence for x in b], upperfence=[x.upperfence for x in b])
    if not any(x.outliers for x in b):
        return go.Box(boxpoints=False, **stats, **common)
    # plotly draws no box at all when the first box's points are empty: an empty box gets one missing point
    return go.Box(y=[[v for _u, v in x.outliers] or [None] for x in b],
                  hovertext=[[str(u) for u, _v in x.outliers] or [""] for x in b], boxpoints="outliers", **stats, **common)


GROUP_TITLE = {"simulation": "simulation (r)", "embedding": "embedding (AUROC)", "detection": "detection (bal. acc.)",
               "fuzz": "fuzz (bal. acc.)", "output": "output (AUROC)"}


def _group(m) -> str:
    """The panel a ScorerMean is drawn in: baselines beside the simulations they are the bar for."""
    return "simulation" if m.scorer == "baseline" else m.scorer


def in_order(means: list) -> list:
    """Simulations, the baselines, then the other scorers in ``analysis.scorers.SCORERS`` order."""
    from analysis.scorers import SCORERS

    order = ["simulation", "baseline", *SCORERS]
    return sorted(means, key=lambda m: (order.index(m.scorer) if m.scorer in order else len(order), m.scorer,
                                        m.variant, m.explainer))


def _name(m) -> str:
    if m.scorer == "baseline":
        return f"baseline: {m.variant}"
    return f"{m.explainer} → {m.variant}" if m.scorer == "simulation" else m.explainer


def scorer_means_figure(means: list) -> go.Figure:
    """One panel per scorer: each explainer's mean score with the mean's 95 % interval as an error bar, and the
    scorer's chance level as a dashed line (cache.scores.ScorerMean)."""
    from plotly.subplots import make_subplots

    from analysis.scorers import CHANCE, SCORERS

    groups = sorted({_group(m) for m in means}, key=lambda g: (SCORERS.index(g) if g in SCORERS else 99, g))
    fig = make_subplots(rows=1, cols=len(groups), subplot_titles=[GROUP_TITLE.get(g, g) for g in groups],
                        horizontal_spacing=0.06)
    for col, g in enumerate(groups, start=1):
        ms = [m for m in in_order(means) if _group(m) == g]
        grey = ["#9a9a9a" if m.scorer == "baseline" else "#ff7a00" for m in ms]
        fig.add_trace(go.Scatter(
            x=[_name(m) for m in ms], y=[m.mean for m in ms], mode="markers", marker=dict(size=9, color=grey),
            error_y=dict(type="data", symmetric=False, array=[(m.hi - m.mean) if m.hi is not None else 0 for m in ms],
                         arrayminus=[(m.mean - m.lo) if m.lo is not None else 0 for m in ms], color="#555"),
            hovertext=[f"n = {m.n}, mean {m.mean:.3f}" + (f" [{m.lo:.3f}, {m.hi:.3f}]" if m.lo is not None else "")
                       for m in ms], showlegend=False), row=1, col=col)
        chance = 0.0 if ms[0].metric == "correlation" else CHANCE.get(ms[0].metric, 0.5)
        fig.add_hline(y=chance, line_dash="dash", line_color="#c03030", row=1, col=col,
                      annotation_text=f"chance {chance:g}", annotation_position="bottom right",
                      annotation_font_color="#c03030")
    fig.update_layout(height=360, template="plotly_white", margin=dict(l=10, r=10, t=40, b=10))
    return fig


def scorer_means_table(means: list) -> list[dict]:
    """The rows of the table beside the figure."""
    from analysis.scorers import CHANCE

    from viewer.components.score_table import METRIC_LABEL

    return [{"scorer": m.scorer, "simulator": m.variant if m.scorer in ("simulation", "baseline") else "",
             "explainer": m.explainer, "metric": METRIC_LABEL.get(m.metric, m.metric.replace("_", " ")), "n": m.n,
             "mean": m.mean, "95 % lo": m.lo, "95 % hi": m.hi,
             "chance": 0.0 if m.metric == "correlation" else CHANCE.get(m.metric)} for m in in_order(means)]
