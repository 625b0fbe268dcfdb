"""Layer overview: the distribution of explanation scores per explainer and simulator, per layer, beside the
units' baselines (explanation-blind predictors), which are not scores of any explanation; then every scorer's mean
per explainer with the mean's 95 % interval and the scorer's chance level, and how many units' scorers disagree
about their best explanation (all aggregated in SQL: cache/scores.py)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.types import MLP
from viewer.components.build import building_caption
from viewer.components.explanations import TINY, TINY_HINT
from viewer.components.picker import unit_link
from viewer.components.scores import box, scorer_means_figure, scorer_means_table
from viewer.resources import cached_models, db_path, read, score_overview, scorer_disagreements, scorer_means


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
        model_id = s.catalog.model(name).model_id
        return name, model_id, score_overview(s, model_id)

    data = read(load)
    if data is None:
        return
    name, model_id, (scoring_sets, units) = data
    if not units:
        st.info("no scored explanation yet: `python -m analysis explain --layer L --neurons 0-99` then "
                "`python -m analysis score --layer L --neurons 0-99 --simulator ...` (or `--scorer embedding`)")
        return
    c1, c2 = st.columns(2)
    scoring_set = c1.radio("records", scoring_sets, horizontal=True) if scoring_sets else None
    sources = sorted(units, key=lambda x: (x != MLP, x))
    source = c2.radio("units", sources, horizontal=True, format_func=lambda x: unit_kind(x),
                      help="explanation scores of neurons and of each dictionary's features, apart")
    if scoring_set is not None:
        layer_boxes(name, model_id, scoring_set, source)
    else:
        st.caption("no simulation or baseline yet: only the other scorers' verdicts below")
    scorers_section(name, model_id, scoring_set, source)


def scorers_section(name: str, model_id: str, scoring_set: str | None, source: str) -> None:
    means = read(lambda s: scorer_means(s, model_id, scoring_set, source))
    if means is None:
        return
    st.subheader("Every scorer, per explainer")
    if not means:
        st.caption("nothing scored for these units yet")
        return
    st.plotly_chart(scorer_means_figure(means), key="scorer_means")
    fmt = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(scorer_means_table(means), hide_index=True, key="scorer_table",
                 column_config={"mean": fmt, "95 % lo": fmt, "95 % hi": fmt, "chance": fmt})
    st.caption("Each point is the mean of one explainer's scores by one scorer over the units; its bar is the 95 % "
               "interval of that mean, mean ± 1.96·sd/√n computed in SQL (a normal approximation over units, not "
               "the per-explanation bootstrap intervals; clipped to the metric's range, and rough for small n). "
               "The dashed line is the scorer's chance level: 0 for simulation's correlation, 0.5 for AUROC and "
               "balanced accuracy. Simulations and baselines are on "
               f"the {scoring_set or '(none)'} records; the other scorers use the units' classification examples "
               "(or, for output, the unit's effect on the next token) whatever the records picked above.")
    split = read(lambda s: scorer_disagreements(s, model_id, source))
    if split is None:
        return
    if split.judged:
        links = ", ".join(unit_link(name, u, tab="explanations") for u in split.examples)
        st.markdown(f"**{split.disagree} of {split.judged}** units whose explanations two or more scorers each "
                    "ranked have scorers that disagree about which explanation is best"
                    + (f" (such as {links})" if links else "") + ".",
                    help="per unit and side (input, output): every simulator on every record set and every "
                         "scorer that scored two or more of its explanations picks its best one; they disagree "
                         "when those picks differ")
    else:
        st.caption("no unit has two or more explanations scored by two or more scorers yet, so no disagreement "
                   "can be counted")


def layer_boxes(name: str, model_id: str, scoring_set: str, source: str) -> None:
    ov = read(lambda s: score_overview(s, model_id, scoring_set, source))
    if ov is None:
        return
    traces = ov.explained + ov.baselines
    layers = sorted({u.layer for t in traces for u, _v in t.points or []} | {b.layer for t in traces for b in t.boxes})
    fig = go.Figure()
    for t in ov.explained:
        tiny = " (tiny offline)" if TINY["explainer"] == t.kind[0] or TINY["simulator"] == t.kind[1] else ""
        fig.add_trace(box(t, f"{t.kind[0]} → {t.kind[1]}{tiny}"))
    for t in ov.baselines:
        fig.add_trace(box(t, f"baseline: {t.kind[1]}", marker_color="#9a9a9a", line_color="#9a9a9a"))
    fig.update_layout(boxmode="group", height=420, yaxis_title="correlation score", template="plotly_white",
                      xaxis=dict(categoryorder="array", categoryarray=[f"L{l}" for l in layers]))
    st.plotly_chart(fig)
    st.caption("Coloured boxes score explanations (explainer → a simulator that reads the explanation). The grey "
               "baseline boxes are not explanation scores: token-lookup predicts each token's mean activation and "
               "ignores any explanation, one value per unit, the bar an explanation has to clear. n2g → n2g is the "
               "unit's Neuron2Graph graph used as the simulator (`python -m analysis n2g`).")
    if any(TINY["explainer"] == t.kind[0] or TINY["simulator"] == t.kind[1] for t in ov.explained):
        st.caption(TINY_HINT)
    if ov.n_units:
        st.markdown(f"**{ov.beats} of {ov.both}** units with both have an explanation that beats their token-lookup "
                    "baseline." if ov.both else "no unit has both an explanation score and a baseline yet")
        st.markdown("**Best explained**: " + ", ".join(
            f"{unit_link(name, r.unit)} {r.score:.2f} ({r.explainer} → {r.simulator})" for r in ov.best))
    st.caption(f"{sum(t.n for t in ov.explained)} scored explanations over {ov.n_units} {unit_kind(source)}; "
               f"{sum(t.n for t in ov.baselines)} baselines")


render()
