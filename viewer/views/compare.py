"""Compare two neurons (or one neuron of two models/runs) side by side."""

from __future__ import annotations

import streamlit as st

from viewer.components.explanations import own_explanation_form, scored_picker
from viewer.components.graph import graph_height, graph_html, shown_patterns
from viewer.components.heatmap import records_html
from viewer.components.picker import neuron_picker
from viewer.resources import cached_models, live_simulators, show_error, store


def render() -> None:
    st.title("Compare")
    try:
        with store() as s:
            models = cached_models(s)
            if not models:
                return
            cols = st.columns(2)
            sides = []
            for prefix, col in zip(("a_", "b_"), cols):
                with col:
                    picked = neuron_picker(models, prefix=prefix, container=col, buttons=False)
                    run = s.find_run(picked.model.name, picked.layer)
                    rec = s.neuron_record(run, picked.layer, picked.neuron) if run else None
                    rows = ([(e, s.simulations(e.explanation_id)) for e in s.explanations(run.run_id, picked.layer, picked.neuron)]
                            if run else [])
                    graph = s.n2g_graph(run.run_id, picked.layer, picked.neuron) if run else None
                    vocab = (s.vocab(picked.model.tokenizer_id, [t for p, _ in graph.patterns for t in p if t >= 0])
                             if graph else {})
                    sides.append((picked, rec, run, rows, graph, vocab))
    except Exception as exc:
        show_error(exc)
        return
    n_show = st.slider("records per side", 3, 20, 8)
    show_graphs = st.toggle("Neuron2Graph graphs", key="cmp_graphs")
    for side, col, (picked, rec, run, rows, graph, vocab) in zip("ab", st.columns(2), sides):
        with col:
            st.subheader(f"{picked.model.name} · L{picked.layer} · N{picked.neuron}")
            if picked.problem:
                st.error(picked.problem)
            if rec is None:
                st.warning("this layer is not harvested")
                continue
            s = rec.stats
            st.caption(f"max {s.max:.3g} · mean {s.mean:.3g} · std {s.std:.3g} · skew {s.skewness:.3g} · "
                       f"kurtosis {s.kurtosis:.3g} · frac > 0 {s.frac_active:.3f}")
            st.html(records_html(rec.most_positive_activation_records[:n_show], max(s.max, 1e-9), 10))
            if show_graphs:
                if graph is None:
                    st.caption("no graph yet (the neuron page's graph tab builds one)")
                else:
                    f = graph.metrics["firing"]
                    st.caption(f"graph: {len(graph.patterns)} patterns · firing P/R/F1 {f['precision']:.2f}/"
                               f"{f['recall']:.2f}/{f['f1']:.2f} (token-lookup F1 "
                               f"{graph.metrics['baseline_firing']['f1']:.2f})")
                    shown = shown_patterns(graph.patterns, 0.5 * graph.max_activation, 8)
                    st.iframe(graph_html(shown, vocab, graph.max_activation), height=graph_height(shown) + 20)
            st.markdown("---")
            scored_picker(rows, rec, key=f"cmp_{side}")
    a, b = sides
    if a[1] is not None:
        st.markdown("---")
        st.caption(f"score your own explanation of {a[0].model.name} L{a[0].layer}/N{a[0].neuron} (left)")
        own_explanation_form(a[2], a[1], live_simulators(a[0].model.name), key="cmp_own")


render()
