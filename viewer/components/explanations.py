"""Explanations panel: the unit's baseline (an explanation-blind predictor), every explanation with every score it
has, each with its 95 % interval (viewer.components.score_table), the simulations in detail, a simulated-vs-real
scatter, paired heatmaps, and a box to write, simulate, score and save your own explanation (the page scores it:
``analysis.evaluate.score_explanation``, and the offline embedding scorer)."""

from __future__ import annotations

from dataclasses import dataclass

import plotly.graph_objects as go
import streamlit as st

from analysis.scoring import to_neuron_units
from analysis.splits import SCORING_SETS
from analysis.types import TokenActivations
from viewer.components.heatmap import md_escape, records_html
from viewer.components.score_table import fmt_ci, score_table_html

TINY = {"explainer": "local", "simulator": "local-all-at-once"}
"""Names of the tiny offline model (SmolLM2-135M) as explainer and simulator."""
TINY_HINT = ("`local` and `local-all-at-once` are the tiny offline model (SmolLM2-135M): it mostly copies a "
             "few-shot explanation and simulates near chance. For real explanations use a capable model: "
             "`--explainer api` and `--simulator api-all-at-once` or `api-json` (README, Explanations).")
BASELINE_HELP = ("token-lookup predicts each token's mean activation and ignores any explanation: it is a score "
                 "of the unit, the number an explanation has to beat, not a score of an explanation")


def baseline_line(baselines: list) -> bool:
    """The unit's baselines, one line; True when the user asks to compute the missing token-lookup one."""
    ok = [b for b in baselines if b.error is None and b.score is not None]
    if ok:
        st.markdown("**Baseline** (no explanation): " + " · ".join(
            f"{b.predictor} r = {fmt_ci(b.score, b.lo, b.hi)} on {b.scoring_set}" for b in ok), help=BASELINE_HELP)
        return False
    c1, c2 = st.columns([3, 2])
    c1.caption("no baseline yet: token-lookup (each token's mean activation) is the score an explanation must beat")
    return c2.button("compute the token-lookup baseline (instant)", key="baseline_now")


def _tiny(name: str, role: str) -> str:
    return f"{name} (tiny offline)" if TINY[role] == name else name


def endpoint(params: dict) -> str:
    """Who ran an explainer or simulator: ``model @ host`` for an API endpoint, the local model's name, or ""."""
    if params.get("base_url"):
        from urllib.parse import urlparse

        url = urlparse(params["base_url"])
        return f"{params.get('model', '?')} @ {url.netloc or params['base_url']}"
    return str(params.get("model", ""))


def api_tokens(*usages: dict | None) -> int | None:
    """Prompt + completion tokens the API calls behind a row cost (None when no API call was made)."""
    used = [u for u in usages if u]
    return sum(u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in used) if used else None


def scatter_figure(real: list[list[float]], simulated_units: list[list[float]]) -> go.Figure:
    xs = [v for r in real for v in r]
    ys = [v for r in simulated_units for v in r]
    fig = go.Figure(go.Scattergl(x=xs, y=ys, mode="markers", marker=dict(size=5, opacity=0.5, color="#ff7a00")))
    lo, hi = min(xs + ys + [0.0]), max(xs + ys + [1e-9])
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line=dict(dash="dot", color="#999"), showlegend=False))
    fig.update_layout(height=300, margin=dict(l=10, r=10, t=10, b=30), xaxis_title="real activation",
                      yaxis_title="simulated (in neuron units)", template="plotly_white", showlegend=False)
    return fig


def paired_heatmaps(recs: list[TokenActivations], simulated_units: list[list[float]], vmax: float) -> str:
    rows, labels = [], []
    for i, (rec, s) in enumerate(zip(recs, simulated_units)):
        rows += [rec, TokenActivations(rec.tokens, s, runs=rec.runs)]
        labels += [f"#{i + 1} real", f"#{i + 1} sim"]
    return records_html(rows, vmax, labels=labels)


def show_scored(sim, records_by_window: dict, vmax: float, max_activation: float, key: str) -> None:
    if sim.error:
        st.error(f"simulation failed: {sim.error}")
        return
    recs = [records_by_window[w] for w in sim.window_ids if w in records_by_window]
    real = [r.activations for r in recs]
    units = to_neuron_units(sim.simulated[: len(recs)], max_activation)
    c1, c2 = st.columns([2, 3])
    c1.plotly_chart(scatter_figure(real, units), key=f"sc_{key}", config={"displayModeBar": False})
    c2.html(paired_heatmaps(recs, units, vmax))


def explanations_panel(rows: list, baselines: list, rec, verdicts: dict | None = None) -> None:
    """``rows``: (stored explanation, its stored simulations); ``baselines``: the unit's stored baselines;
    ``verdicts``: the scorers' verdicts on them (``store.scorer_results.of_explanations``; None: read here)."""
    if not rows:
        st.info("no explanation yet: write one below, or run `python -m analysis explain ... --neurons "
                f"{rec.unit.index}` and `python -m analysis score ...`")
        return
    if verdicts is None:
        from viewer.resources import explanation_verdicts

        verdicts = explanation_verdicts([e.explanation_id for e, _s in rows])
    st.html(score_table_html(rows, verdicts, baselines))
    st.caption("Each score with its 95 % interval (bootstrap over the records or examples; \"no interval\": scored "
               "before intervals were kept); the best of each column in bold. Simulation scores are correlations "
               "(chance 0) beside the token-lookup baseline; the embedding and output scorers' are AUROC, detection "
               "and fuzz balanced accuracy (chance 0.5).")
    with st.expander("the simulations in detail (R², calibration, models, API tokens)"):
        simulation_details(rows, baselines)
    if any(e.explainer == TINY["explainer"] or any(s.simulator == TINY["simulator"] for s in sims)
           for e, sims in rows):
        st.caption(TINY_HINT)
    scored_picker(rows, rec, key="stored")


def simulation_details(rows: list, baselines: list) -> None:
    """One row per (explanation, simulation), with every number a simulation keeps."""
    base = {b.scoring_set: b.score for b in baselines if b.error is None and b.score is not None}
    table = []
    for e, sims in rows:
        for s in sims or [None]:
            table.append({"explanation": e.text, "explainer": _tiny(e.explainer, "explainer"),
                          "simulator": _tiny(s.simulator, "simulator") if s else "—",
                          "set": s.scoring_set if s else "—", "score": None if s is None else s.score,
                          "95 % interval": "" if s is None or s.score is None else
                          "no interval" if s.lo is None else f"[{s.lo:.3f}, {s.hi:.3f}]",
                          "vs baseline": None if s is None or s.score is None or s.scoring_set not in base
                          else s.score - base[s.scoring_set],
                          "R²": None if s is None else s.rsquared,
                          "R² calibrated": (s.calibration or {}).get("rsquared") if s else None,
                          "error": (s.error or "") if s else "not scored",
                          "flag": e.degenerate or "",
                          "explainer model": endpoint(e.params),
                          "simulator model": endpoint(s.params) if s else "",
                          "API tokens": api_tokens(e.usage, s.usage if s else None)})
    if table:
        fmt = st.column_config.NumberColumn(format="%.3f")
        st.dataframe(table, hide_index=True, column_config={
            "score": fmt, "R²": fmt, "R² calibrated": st.column_config.NumberColumn(
                format="%.3f", help="R² through a least-squares line real ≈ a · simulated + b fitted on the "
                                    "calibration records (disjoint from the explainer's and the scored ones)"),
            "vs baseline": st.column_config.NumberColumn(
                format="%+.3f", help="score − the unit's token-lookup baseline on the same records"),
            "API tokens": st.column_config.NumberColumn(
                format="%d", help="prompt + completion tokens of the API calls behind the explanation and this "
                                  "simulation (0 when every reply came from the reply cache)"),
            "explainer model": st.column_config.TextColumn(help="the model (and endpoint) that wrote it"),
            "flag": st.column_config.TextColumn(help="a degenerate explanation: empty, a copy of a few-shot "
                                                     "explanation, or the prompt restated (shown, not hidden)")})


def scored_picker(rows: list, rec, key: str) -> None:
    """Pick one stored scored simulation of a unit and show its score, scatter and paired heatmaps."""
    scored = [(e, s) for e, sims in rows for s in sims]
    if not scored:
        st.caption("no scored explanation for this unit yet")
        return
    labels = [f"{fmt_ci(s.score, s.lo, s.hi)} · {e.explainer} · {s.simulator} · {s.scoring_set} · {e.text[:50]}"
              for e, s in scored]
    pick = st.selectbox("explanation", range(len(scored)), format_func=lambda i: labels[i], key=f"pick_{key}")
    e, s = scored[pick]
    st.markdown(f"*the main thing this neuron does is find* **{md_escape(e.text)}**")
    st.metric("correlation score", fmt_ci(s.score, s.lo, s.hi),
              help=f"95 % interval in brackets; R² {s.rsquared:.3f}" if s.rsquared is not None else None)
    by_window = {r.window_id: r for r in rec.most_positive_activation_records + rec.random_sample}
    show_scored(s, by_window, max(rec.stats.max, 1e-9), rec.stats.max, key=key)


@dataclass(frozen=True)
class OwnExplanation:
    """What the user asked the own-explanation box to simulate and score."""

    text: str
    """As typed, stripped ("" when the box was submitted empty)."""
    simulator: str
    """The name of a live simulator (``viewer.resources.live_simulators``)."""
    scoring_set: str
    """One of ``analysis.splits.SCORING_SETS``."""

    @property
    def explanation(self) -> str:
        """The text to simulate: without a final period (the prompt ends the sentence)."""
        return self.text.rstrip(".")


def own_explanation_form(simulators: list[str], key: str = "own") -> OwnExplanation | None:
    """A box to write an explanation and pick a live simulator (of ``simulators``) and records: what the user
    asked for when they submit it, else None (the page scores it and hands it to ``own_explanation_result``)."""
    st.markdown("**Your explanation**: simulated and scored live on the held-out records, and scored by the "
                "offline embedding scorer on the unit's classification examples")
    with st.form(f"{key}_explanation"):
        text = st.text_input("the main thing this neuron does is find …", key=f"{key}_text")
        c1, c2 = st.columns(2)
        sim_name = c1.selectbox("simulator", simulators, key=f"{key}_sim")
        scoring_set = c2.selectbox("records", SCORING_SETS, key=f"{key}_set")
        go_ = st.form_submit_button("simulate and score")
    return OwnExplanation(text.strip(), sim_name, scoring_set) if go_ else None


def own_explanation_result(rec, asked: OwnExplanation | None, scored=None, key: str = "own"):
    """The user's scored explanation below its box: ``scored`` (analysis.evaluate.ScoredSimulation) when the page
    has just scored what they ``asked``, else the one this session keeps; returns it when the user asks to save it
    (the caller stores it), else None."""
    if asked is not None and not asked.text:
        st.warning("write an explanation first")
        return None
    if scored is not None:
        from viewer.resources import embedding_live

        st.session_state[f"{key}_scored"] = scored
        st.session_state[f"{key}_embedding"] = embedding_live(rec, scored.explanation)
    scored = st.session_state.get(f"{key}_scored")
    if scored is not None and scored.explanation:
        by_window = {r.window_id: r for r in rec.most_positive_activation_records + rec.random_sample}
        c1, c2 = st.columns(2)
        c1.metric("correlation score", fmt_ci(scored.score, scored.lo, scored.hi),
                  help=f"simulated by {scored.simulator} on {scored.scoring_set}; 95 % interval in brackets")
        embedding_metric(c2, st.session_state.get(f"{key}_embedding"))
        show_scored(scored, by_window, max(rec.stats.max, 1e-9), rec.stats.max, key=key)
        if scored.error is None and st.button("save this explanation and its score", key=f"{key}_save"):
            del st.session_state[f"{key}_scored"]
            st.session_state.pop(f"{key}_embedding", None)
            return scored
    return None


def embedding_metric(col, result) -> None:
    """The embedding scorer's verdict (analysis.scorers.ScorerResult, or an error string) as a metric."""
    if result is None:
        return
    if isinstance(result, str) or result.score is None:
        col.metric("embedding AUROC", "—", help=result if isinstance(result, str) else result.error)
        return
    col.metric("embedding AUROC", fmt_ci(result.score, result.lo, result.hi),
               help=f"how much closer the explanation reads to the unit's {result.n_pos} activating examples than "
                    f"to its {result.n_neg} non-activating ones (chance 0.5); 95 % interval in brackets; not saved "
                    "with the explanation (`python -m analysis score --scorer embedding` stores it)")


def similar_line(model_name: str, similar) -> None:
    """Units with explanations like this unit's (``similar``: (text, hits or None) or None)."""
    from viewer.components.picker import unit_link

    if similar is None:
        return
    text, hits = similar
    if hits is None:
        st.caption("units with similar explanations: this explanation has no sentence vector yet "
                   "(`python -m analysis embed`, or the Search page)")
    elif hits:
        st.markdown(f"**Units with explanations like** *{md_escape(text)}*: " + " · ".join(
            f"{unit_link(model_name, h.unit, tab='explanations')} {h.match:.2f} {md_escape(h.text[:60])}"
            for h in hits))
