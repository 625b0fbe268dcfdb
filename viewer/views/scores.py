"""Layer overview: the distribution of explanation scores per explainer and simulator, per layer."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from viewer.components.picker import neuron_link
from viewer.resources import cached_models, show_error, store


def render() -> None:
    st.title("Explanation scores")
    try:
        with store() as s:
            models = cached_models(s)
            if not models:
                return
            names = sorted({m.name for m in models})
            name = st.selectbox("model", names)
            model = s.model(name)
            runs = [r for r in s.runs() if r.model_id == model.model_id and r.status == "done"]
            rows = [row for r in runs for row in s.layer_scores(r.run_id)]
    except Exception as exc:
        show_error(exc)
        return
    if not rows:
        st.info("no scored explanation yet: `python -m analysis explain --layer L --neurons 0-99` then "
                "`python -m analysis score --layer L --neurons 0-99 --simulator ...`")
        return
    scoring_set = st.radio("records", sorted({r[4] for r in rows}), horizontal=True)
    rows = [r for r in rows if r[4] == scoring_set and r[5] is not None]
    layers = sorted({r[0] for r in rows})
    fig = go.Figure()
    for key in sorted({(r[2], r[3]) for r in rows}):
        pts = [r for r in rows if (r[2], r[3]) == key]
        fig.add_trace(go.Box(x=[f"L{r[0]}" for r in pts], y=[r[5] for r in pts], name=f"{key[0]} → {key[1]}",
                             boxpoints="all", jitter=0.4, pointpos=0, hovertext=[f"L{r[0]}/N{r[1]}" for r in pts]))
    fig.update_layout(boxmode="group", height=420, yaxis_title="correlation score", template="plotly_white",
                      xaxis=dict(categoryorder="array", categoryarray=[f"L{l}" for l in layers]))
    st.plotly_chart(fig)
    st.caption("The token-lookup *simulator* ignores the explanation (it predicts each token's mean activation): "
               "its boxes are the same for every explainer and show how far token identity alone explains a neuron. "
               "n2g → n2g is the neuron's Neuron2Graph graph used as the simulator (`python -m analysis n2g`).")
    best = sorted((r for r in rows if r[3] != "token-lookup"), key=lambda r: -r[5])[:10]
    if best:
        st.markdown("**Best explained** (simulators that read the explanation): " + ", ".join(
            f"{neuron_link(name, r[0], r[1])} {r[5]:.2f} ({r[2]} → {r[3]})" for r in best))
    st.caption(f"{len(rows)} scored explanations over {len({(r[0], r[1]) for r in rows})} neurons")


render()
