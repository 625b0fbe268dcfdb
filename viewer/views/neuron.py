"""Neuron page: stats, histogram, top / quantile / random records as heatmaps, related tokens and neurons,
explanations, its Neuron2Graph graph and its word-pool topics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from viewer.components.charts import histogram_figure
from viewer.components.export import neuron_page_html
from viewer.components.graph import graph_panel
from viewer.components.heatmap import records_html
from viewer.components.picker import neuron_link, neuron_picker
from viewer.components.topics import topics_panel
from viewer.resources import cached_models, db_path, live_simulators, run_job, show_error, store, subject

TABS = ["top", "quantiles", "random", "tokens & weights", "explanations", "graph", "topics"]


def harvest_button(model: str, layer: int, corpus: str) -> None:
    st.warning(f"layer {layer} of {model} is not in this cache.")
    tokens = st.select_slider("tokens to harvest", [10_000, 25_000, 50_000, 100_000], value=25_000)
    if st.button(f"harvest layer {layer} now"):
        run_job(["harvest", "--model", model, "--corpus", corpus, "--layers", str(layer), "--max-tokens", str(tokens)],
                f"harvesting layer {layer} over {tokens:,} tokens…")
    st.caption(f"or from a shell: `python -m analysis harvest --model {model} --corpus {corpus} --layers {layer} "
               f"--db {db_path()}`")


def related_section(model_name: str, rec, layer: int, neuron: int) -> None:
    st.markdown("**Activation-based**: tokens with the highest mean activation (tokens seen at least 3 times)")
    if rec.top_tokens:
        st.dataframe(pd.DataFrame([{"token": repr(t), "mean act": m, "count": c} for _, t, m, c in rec.top_tokens]),
                     hide_index=True, height=250)
    if not st.toggle("weight-based related tokens and neurons (loads the model)", key="weights_on"):
        return
    from analysis.weights import related_weights

    try:
        subj = subject(model_name)
        rel = related_weights(subj, layer, neuron, k=10)
    except Exception as exc:  # the model may be unavailable here (hub model offline)
        show_error(exc)
        return
    tok = subj.tokenizer
    st.caption(rel.note)

    def tok_table(links):
        return pd.DataFrame([{"token": repr(tok.decode([l.token_id])), "weight": l.weight} for l in links])

    c1, c2 = st.columns(2)
    c1.markdown("input tokens (+)"), c1.dataframe(tok_table(rel.input_tokens_pos), hide_index=True)
    c1.markdown("input tokens (−)"), c1.dataframe(tok_table(rel.input_tokens_neg), hide_index=True)
    c2.markdown("output tokens (+)"), c2.dataframe(tok_table(rel.output_tokens_pos), hide_index=True)
    c2.markdown("output tokens (−)"), c2.dataframe(tok_table(rel.output_tokens_neg), hide_index=True)
    for title, pos, neg in [("upstream neurons", rel.upstream_pos, rel.upstream_neg),
                            ("downstream neurons", rel.downstream_pos, rel.downstream_neg)]:
        st.markdown(f"**{title}** — most positive: " + ", ".join(
            f"{neuron_link(model_name, l.layer, l.neuron)} ({l.weight:+.3f})" for l in pos))
        st.markdown("most negative: " + ", ".join(
            f"{neuron_link(model_name, l.layer, l.neuron)} ({l.weight:+.3f})" for l in neg))


def render() -> None:
    try:
        with store() as s:
            models = cached_models(s)
            if not models:
                return
            picked = neuron_picker(models)
            run = s.find_run(picked.model.name, picked.layer)
            rec = s.neuron_record(run, picked.layer, picked.neuron) if run else None
            corpus = s.corpus_arg_for(picked.model.name)
    except Exception as exc:
        show_error(exc)
        return
    model, layer, neuron = picked.model, picked.layer, picked.neuron
    if picked.problem:
        st.error(picked.problem)
    st.title(f"{model.name} · L{layer} · N{neuron}")
    if rec is None:
        harvest_button(model.name, layer, corpus)
        return
    s = rec.stats
    vmax = max(s.max, 1e-9)
    cols = st.columns(7)
    for col, (label, val) in zip(cols, [("max", s.max), ("mean", s.mean), ("std", s.std), ("skew", s.skewness),
                                        ("kurtosis", s.kurtosis), ("frac > 0", s.frac_active), ("min", s.min)]):
        col.metric(label, f"{val:.3g}")
    log_y = st.toggle("log y", value=True, key="log_y")
    st.plotly_chart(histogram_figure(s, log_y), config={"displayModeBar": False})
    qp = st.query_params
    tab = qp.get("tab", "top") if qp.get("tab") in TABS else "top"
    c1, c2, c3 = st.columns([6, 2, 1])
    tab = c1.segmented_control("records", TABS, default=tab, key="tab_sel", label_visibility="collapsed") or "top"
    qp["tab"] = tab
    around = c2.toggle("only ±8 tokens around each max", value=qp.get("around") == "1", key="around_sel")
    qp["around"] = "1" if around else "0"
    c3.download_button("Export HTML", neuron_page_html(rec, model.name),
                       file_name=f"{model.name}-L{layer}-N{neuron}.html".replace("/", "_"), mime="text/html")
    window = 8 if around else None
    if tab == "top":
        st.html(records_html(rec.most_positive_activation_records, vmax, window,
                             [f"#{i + 1}" for i in range(len(rec.most_positive_activation_records))]))
    elif tab == "quantiles":
        bounds = [float("-inf"), *rec.quantile_boundaries, float("inf")]
        for i, recs in enumerate(rec.random_sample_by_quantile):
            st.markdown(f"**bin {i + 1}**: window max in [{bounds[i]:.3g}, {bounds[i + 1]:.3g})")
            st.html(records_html(recs, vmax, window))
    elif tab == "random":
        st.html(records_html(rec.random_sample, vmax, window))
    elif tab == "explanations":
        from viewer.components.explanations import explanations_panel

        try:
            with store() as s_:
                rows = [(e, s_.simulations(e.explanation_id)) for e in s_.explanations(run.run_id, layer, neuron)]
        except Exception as exc:
            show_error(exc)
            return
        explanations_panel(rows, run, rec, live_simulators(model.name))
    elif tab == "topics":
        try:
            topics_panel(model, layer, neuron)
        except Exception as exc:
            show_error(exc)
    elif tab == "graph":
        try:
            graph_panel(model, run, rec, layer, neuron, window)
        except Exception as exc:
            show_error(exc)
    else:
        related_section(model.name, rec, layer, neuron)
    st.caption((f"run {rec.run_id} · corpus {rec.corpus_id} · {rec.stats.n_tokens:,} tokens · "
                           f"hook {rec.hook_point} · activation {model.act_fn}"))


render()
