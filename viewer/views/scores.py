"""Layer overview: the distribution of explanation scores per explainer and simulator, per layer, beside the
units' baselines (explanation-blind predictors), which are not scores of any explanation."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.types import MLP
from viewer.components.build import building_caption
from viewer.components.explanations import TINY, TINY_HINT
from viewer.components.picker import unit_link
from viewer.resources import cached_models, db_path, read


POINTS = 3000  # a box draws every point up to this many, else only its outliers (46k points draw slowly)


def unit_kind(source: str) -> str:
    return "neurons" if source == MLP else source.removeprefix("sae:").rsplit("@", 1)[0] + " features"


def render() -> None:
    st.title("Explanation scores")
    building_caption(db_path(), ("baselines", "score"))

    def load(s):
        models = cached_models(s)
        if not models:
            return None
        name = st.selectbox("model", sorted({m.name for m in models}))
        model = s.catalog.model(name)
        runs = s.runs.finished(model.model_id, source=None)
        return (name, [row for r in runs for row in s.explanations.scores(r.run_id)],
                [b for r in runs for b in s.explanations.baseline_scores(r.run_id)])

    data = read(load)
    if data is None:
        return
    name, rows, baselines = data
    if not rows and not baselines:
        st.info("no scored explanation yet: `python -m analysis explain --layer L --neurons 0-99` then "
                "`python -m analysis score --layer L --neurons 0-99 --simulator ...`")
        return
    c1, c2 = st.columns(2)
    scoring_set = c1.radio("records", sorted({r.scoring_set for r in rows} | {b.scoring_set for b in baselines}),
                           horizontal=True)
    units = {r.unit.source for r in rows} | {b.unit.source for b in baselines}
    sources = list(dict.fromkeys(sorted(units, key=lambda x: (x != MLP, x))))
    source = c2.radio("units", sources, horizontal=True, format_func=lambda x: unit_kind(x),
                      help="explanation scores of neurons and of each dictionary's features, apart")
    rows = [r for r in rows if r.scoring_set == scoring_set and r.score is not None and r.unit.source == source]
    baselines = [b for b in baselines if b.scoring_set == scoring_set and b.unit.source == source]
    layers = sorted({r.unit.layer for r in rows} | {b.unit.layer for b in baselines})
    fig = go.Figure()
    for key in sorted({(r.explainer, r.simulator) for r in rows}):
        pts = [r for r in rows if (r.explainer, r.simulator) == key]
        tiny = " (tiny offline)" if TINY["explainer"] == key[0] or TINY["simulator"] == key[1] else ""
        fig.add_trace(go.Box(x=[f"L{r.unit.layer}" for r in pts], y=[r.score for r in pts],
                             name=f"{key[0]} → {key[1]}{tiny}", boxpoints="all" if len(pts) <= POINTS else "outliers",
                             jitter=0.4, pointpos=0,
                             hovertext=[str(r.unit) for r in pts]))
    for predictor in sorted({b.predictor for b in baselines}):
        pts = [b for b in baselines if b.predictor == predictor]
        fig.add_trace(go.Box(x=[f"L{b.unit.layer}" for b in pts], y=[b.score for b in pts],
                             name=f"baseline: {predictor}", boxpoints="all" if len(pts) <= POINTS else "outliers",
                             jitter=0.4, pointpos=0,
                             marker_color="#9a9a9a", line_color="#9a9a9a", hovertext=[str(b.unit) for b in pts]))
    fig.update_layout(boxmode="group", height=420, yaxis_title="correlation score", template="plotly_white",
                      xaxis=dict(categoryorder="array", categoryarray=[f"L{l}" for l in layers]))
    st.plotly_chart(fig)
    st.caption("Coloured boxes score explanations (explainer → a simulator that reads the explanation). The grey "
               "baseline boxes are not explanation scores: token-lookup predicts each token's mean activation and "
               "ignores any explanation, one value per unit, the bar an explanation has to clear. n2g → n2g is the "
               "unit's Neuron2Graph graph used as the simulator (`python -m analysis n2g`).")
    if any(TINY["explainer"] == r.explainer or TINY["simulator"] == r.simulator for r in rows):
        st.caption(TINY_HINT)
    base = {b.unit: b.score for b in baselines if b.predictor == "token-lookup"}
    best_of: dict = {}
    for r in rows:
        if r.unit not in best_of or r.score > best_of[r.unit].score:
            best_of[r.unit] = r
    beats = [u for u, r in best_of.items() if u in base and r.score > base[u]]
    if best_of:
        both = sum(u in base for u in best_of)
        st.markdown(f"**{len(beats)} of {both}** units with both have an explanation that beats their token-lookup "
                    "baseline." if both else "no unit has both an explanation score and a baseline yet")
        st.markdown("**Best explained**: " + ", ".join(
            f"{unit_link(name, r.unit)} {r.score:.2f} ({r.explainer} → {r.simulator})"
            for r in sorted(best_of.values(), key=lambda r: -r.score)[:10]))
    st.caption(f"{len(rows)} scored explanations over {len({r.unit for r in rows})} {unit_kind(source)}; "
               f"{len(baselines)} baselines")


render()
