"""Layer overview: the distribution of explanation scores per explainer and simulator, per layer, beside the
units' baselines (explanation-blind predictors), which are not scores of any explanation."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.types import MLP
from viewer.components.build import building_caption
from viewer.components.explanations import TINY, TINY_HINT
from viewer.components.picker import unit_link
from viewer.components.scores import box
from viewer.resources import cached_models, db_path, read, score_overview


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
    if not scoring_sets:
        st.info("no scored explanation yet: `python -m analysis explain --layer L --neurons 0-99` then "
                "`python -m analysis score --layer L --neurons 0-99 --simulator ...`")
        return
    c1, c2 = st.columns(2)
    scoring_set = c1.radio("records", scoring_sets, horizontal=True)
    sources = sorted(units, key=lambda x: (x != MLP, x))
    source = c2.radio("units", sources, horizontal=True, format_func=lambda x: unit_kind(x),
                      help="explanation scores of neurons and of each dictionary's features, apart")
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
