"""Layer overview: the distribution of explanation scores per explainer and simulator, per layer."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.types import MLP
from viewer.components.picker import unit_link


def unit_kind(source: str) -> str:
    return "neurons" if source == MLP else source.removeprefix("sae:").rsplit("@", 1)[0] + " features"
from viewer.resources import cached_models, read


def render() -> None:
    st.title("Explanation scores")

    def load(s):
        models = cached_models(s)
        if not models:
            return None
        name = st.selectbox("model", sorted({m.name for m in models}))
        model = s.catalog.model(name)
        return name, [row for r in s.runs.finished(model.model_id, source=None) for row in s.explanations.scores(r.run_id)]

    data = read(load)
    if data is None:
        return
    name, rows = data
    if not rows:
        st.info("no scored explanation yet: `python -m analysis explain --layer L --neurons 0-99` then "
                "`python -m analysis score --layer L --neurons 0-99 --simulator ...`")
        return
    c1, c2 = st.columns(2)
    scoring_set = c1.radio("records", sorted({r.scoring_set for r in rows}), horizontal=True)
    sources = list(dict.fromkeys(sorted({r.unit.source for r in rows}, key=lambda x: (x != MLP, x))))
    source = c2.radio("units", sources, horizontal=True, format_func=lambda x: unit_kind(x),
                      help="explanation scores of neurons and of each dictionary's features, apart")
    rows = [r for r in rows if r.scoring_set == scoring_set and r.score is not None and r.unit.source == source]
    layers = sorted({r.unit.layer for r in rows})
    fig = go.Figure()
    for key in sorted({(r.explainer, r.simulator) for r in rows}):
        pts = [r for r in rows if (r.explainer, r.simulator) == key]
        fig.add_trace(go.Box(x=[f"L{r.unit.layer}" for r in pts], y=[r.score for r in pts], name=f"{key[0]} → {key[1]}",
                             boxpoints="all", jitter=0.4, pointpos=0, hovertext=[str(r.unit) for r in pts]))
    fig.update_layout(boxmode="group", height=420, yaxis_title="correlation score", template="plotly_white",
                      xaxis=dict(categoryorder="array", categoryarray=[f"L{l}" for l in layers]))
    st.plotly_chart(fig)
    st.caption("The token-lookup *simulator* ignores the explanation (it predicts each token's mean activation): "
               "its boxes are the same for every explainer and show how far token identity alone explains a neuron. "
               "n2g → n2g is the neuron's Neuron2Graph graph used as the simulator (`python -m analysis n2g`).")
    best = sorted((r for r in rows if r.simulator != "token-lookup"), key=lambda r: -r.score)[:10]
    if best:
        st.markdown("**Best explained** (simulators that read the explanation): " + ", ".join(
            f"{unit_link(name, r.unit)} {r.score:.2f} ({r.explainer} → {r.simulator})" for r in best))
    st.caption(f"{len(rows)} scored explanations over {len({r.unit for r in rows})} {unit_kind(source)}")

render()
