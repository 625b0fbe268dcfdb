"""Compare two units (or one unit of two models/runs) side by side: records, graphs, and every explanation with
every score it has (each with its 95 % interval), the unit's baseline beside them."""

from __future__ import annotations

import streamlit as st

from analysis.n2g.evaluate import FIRING_FRACTION
from viewer.components.explanations import own_explanation_form, own_explanation_result, scored_picker
from viewer.components.graph import graph_height, graph_html, shown_patterns
from viewer.components.heatmap import records_html
from viewer.components.picker import unit_title
from viewer.components.score_table import score_table_html
from viewer.resources import cached_models, live_simulators, pick_unit, read, save_explanation, score_live


def _side(s, prefix: str, col):
    """What one side shows: (picked, record, explanations with simulations, graph, graph vocabulary, the scorers'
    verdicts on the explanations, the unit's baselines)."""
    picked, run = pick_unit(s, prefix=prefix, container=col, buttons=False)
    if run is None:
        return picked, None, [], None, {}, {}, []
    rec = s.records.unit_record(run, picked.unit)
    graph = s.graphs.get(run.run_id, picked.unit)
    vocab = s.catalog.vocab(picked.model.tokenizer_id, [t for p, _ in graph.patterns for t in p if t >= 0]) if graph else {}
    rows = s.explanations.with_simulations(run.run_id, picked.unit)
    verdicts = s.scorer_results.of_explanations([e.explanation_id for e, _s in rows])
    return picked, rec, rows, graph, vocab, verdicts, s.explanations.baselines(run.run_id, picked.unit)


def render() -> None:
    st.title("Compare")

    def load(s):
        if not cached_models(s):
            return None
        return [_side(s, prefix, col) for prefix, col in zip(("a_", "b_"), st.columns(2))]

    sides = read(load)
    if sides is None:
        return
    n_show = st.slider("records per side", 3, 20, 8)
    show_graphs = st.toggle("Neuron2Graph graphs", key="cmp_graphs")
    for side, col, (picked, rec, rows, graph, vocab, verdicts, baselines) in zip("ab", st.columns(2), sides):
        with col:
            st.subheader(unit_title(picked.model.name, picked.unit))
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
                    shown = shown_patterns(graph.patterns, FIRING_FRACTION * graph.max_activation, 8)
                    st.iframe(graph_html(shown, vocab, graph.max_activation), height=graph_height(shown) + 20)
            st.markdown("---")
            if rows:
                st.html(score_table_html(rows, verdicts, baselines))
            else:
                st.caption("no explanation yet")
            scored_picker(rows, rec, key=f"cmp_{side}")
    st.caption("Each score with its 95 % interval (\"no interval\": scored before intervals were kept), the best "
               "of each column in bold; simulation r has chance 0, AUROC and balanced accuracy 0.5.")
    (picked, rec, *_rest), _b = sides
    if rec is not None:
        st.markdown("---")
        st.caption(f"score your own explanation of {picked.model.name} {picked.unit} (left)")
        asked = own_explanation_form(list(live_simulators()), key="cmp_own")
        if (to_save := own_explanation_result(rec, asked, score_live(rec, asked), key="cmp_own")) is not None:
            save_explanation(rec, to_save)


render()
