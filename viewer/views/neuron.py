"""Neuron page: stats, histogram, top / quantile / random records as heatmaps, related tokens and neurons."""

from __future__ import annotations

import subprocess
import sys
from types import SimpleNamespace

import pandas as pd
import streamlit as st

from analysis.config import REPO_ROOT
from viewer.components.charts import histogram_figure
from viewer.components.export import neuron_page_html
from viewer.components.heatmap import records_html
from viewer.components.picker import neuron_link, neuron_picker, neuron_url
from viewer.resources import cached_models, db_path, live_simulators, show_error, store, subject

TABS = ["top", "quantiles", "random", "tokens & weights", "explanations", "graph", "topics"]


def run_job(args: list[str], label: str) -> None:
    """Run ``python -m analysis ARGS`` (it writes the cache), showing its progress line live; rerun when done."""
    cmd = [sys.executable, "-m", "analysis", *args, "--db", str(db_path())]
    with st.status(label, expanded=True) as status:
        line = st.empty()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        buf = ""
        while (ch := proc.stderr.read(1)):
            if ch in "\r\n":
                if buf.strip():
                    line.code(buf.strip())
                buf = ""
            else:
                buf += ch
        if proc.wait() == 0:
            status.update(label="done", state="complete")
            st.rerun()
        else:
            status.update(label="the job failed (see above)", state="error")


def harvest_button(model: str, layer: int, corpus: str) -> None:
    st.warning(f"layer {layer} of {model} is not in this cache.")
    tokens = st.select_slider("tokens to harvest", [10_000, 25_000, 50_000, 100_000], value=25_000)
    if st.button(f"harvest layer {layer} now"):
        run_job(["harvest", "--model", model, "--corpus", corpus, "--layers", str(layer), "--max-tokens", str(tokens)],
                f"harvesting layer {layer} over {tokens:,} tokens…")
    st.caption(f"or from a shell: `python -m analysis harvest --model {model} --corpus {corpus} --layers {layer} "
               f"--db {db_path()}`")


def graph_section(model, run, rec, layer: int, neuron: int, window: int | None) -> None:
    """The unit's Neuron2Graph: the drawing, P/R/F1 against token-lookup, held-out records real vs predicted."""
    from analysis.n2g.graph import similar
    from analysis.n2g.pipeline import graph_of, split_records
    from viewer.components.graph import graph_height, graph_html, shown_patterns

    with store() as s:
        g = s.n2g_graph(run.run_id, layer, neuron)
        vocab = s.vocab(model.tokenizer_id, [t for p, _ in g.patterns for t in p if t >= 0]) if g else {}
        others = s.n2g_layer_patterns(run.run_id, layer) if g else {}
    if g is None:
        st.info("No Neuron2Graph graph for this neuron yet: fitting one takes a few seconds on CPU, plus loading "
                "the model.")
        if st.button("build the graph now"):
            run_job(["n2g", "--model", model.name, "--layer", str(layer), "--neurons", str(neuron)],
                    f"fitting the graph of L{layer} N{neuron}…")
        st.caption(f"or from a shell, a whole layer: `python -m analysis n2g --model {model.name} --layer {layer} "
                   f"--db {db_path()}`")
        return
    m = g.metrics
    st.markdown(f"**{len(g.patterns)} patterns** · fitted on 10 top records, scored on 10 held-out ones · "
                f"a token fires at ≥ 0.5 × max = {0.5 * g.max_activation:.3g} · augmentation "
                f"{'on' if g.params.get('augment') else 'off'} · fitted in {g.seconds:.1f} s (its share of its batch)")
    st.dataframe(pd.DataFrame([
        {"": name, "firing P": m[a]["precision"], "firing R": m[a]["recall"], "firing F1": m[a]["f1"],
         "non-firing P": m[b]["precision"], "non-firing R": m[b]["recall"], "non-firing F1": m[b]["f1"]}
        for name, a, b in [("Neuron2Graph", "firing", "non_firing"),
                           ("token-lookup", "baseline_firing", "baseline_non_firing")]]).round(3), hide_index=True)
    c1, c2 = st.columns([2, 3])
    exceptions = c1.toggle("also non-firing patterns", key="n2g_all",
                           help="substitutes and contexts that silence the neuron (stored as exceptions)")
    roots = c2.slider("activating tokens shown (strongest first)", 1, 50, 12, key="n2g_roots")
    shown = shown_patterns(g.patterns, 0.0 if exceptions else 0.5 * g.max_activation, roots)
    st.caption(f"{len(shown)} of {len(g.patterns)} patterns. Drag, zoom, hover. Read left to right into the "
               "activating token (outlined, right): boxes are tokens that matter, shaded by activation; grey dots "
               "match any token.")
    st.iframe(graph_html(shown, vocab, g.max_activation), height=graph_height(shown) + 20)
    others.pop(neuron, None)
    near = similar(g.patterns, others, n=10)
    st.markdown(f"**Similar graphs in layer {layer}** (Jaccard over trie paths, of {len(others)} other graphs): "
                + (", ".join(f"[L{layer}/N{u}]({neuron_url(model.name, layer, u, tab='graph')}) {j:.2f}"
                             for u, j in near) or "none overlaps"))
    _train, test = split_records(rec)
    graph = graph_of(g.patterns)
    st.markdown("**Held-out records**: real (top line) vs the graph's prediction")
    rows, labels = [], []
    for i, r in enumerate(test):
        predicted = graph.predict(list(r.token_ids))
        rows += [r, SimpleNamespace(tokens=r.tokens, activations=predicted)]
        labels += [f"#{i + 1} real", "predicted"]
    st.html(records_html(rows, max(rec.stats.max, 1e-9), window, labels))


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


TOPIC_SOURCES = {"hi-c": "Hi-C", "hi-i": "Hi-I", "activation": "activation", "lo-c": "Lo-C", "lo-i": "Lo-I"}
TOPIC_HELP = ("Hi-C: the neuron's output vector through the later blocks, final norm and unembedding. Hi-I: straight "
              "to final norm + unembedding. activation: the tokens it fires on most in the harvest. Lo-C / Lo-I: a "
              "residual-stream dimension through the later blocks / through its own block only.")


def topics_section(model, layer: int, neuron: int) -> None:
    """Superposed topics (Lim & Lauw) of the neuron, per source and polarity, against random word sets."""
    from viewer.components.topics import STYLE, contributions, scores_figure, topic_html

    c1, c2 = st.columns([3, 1])
    source = c1.segmented_control("source", list(TOPIC_SOURCES), default="hi-c", format_func=TOPIC_SOURCES.get,
                                  key="topic_source", help=TOPIC_HELP) or "hi-c"
    unit = neuron
    if source.startswith("lo"):
        unit = c2.number_input("residual dimension", 0, None, min(neuron, 575), key="topic_dim")
    with store() as s:
        sets = s.topic_sets(model.model_id, layer, unit, source)
    if sets:
        stats = sets[0].params.get("stats")
        sets = [ts for ts in sets if ts.params.get("stats") == stats]
    what = f"residual dimension {unit}" if source.startswith("lo") else f"N{neuron}"
    if not sets:
        st.info(f"No topics for L{layer} {what} ({source}) yet: about a second once the model is loaded.")
        if st.button("compute topics now"):
            run_job(["topics", "--model", model.name, "--layer", str(layer), "--neurons", str(unit), "--mode", source],
                    f"topics of L{layer} {what} ({source})…")
        st.caption(f"or a whole layer from a shell: `python -m analysis topics --model {model.name} --layer {layer} "
                   f"--db {db_path()}`")
        return
    p = sets[0].params
    st.caption(f"k = {p['k']} words per topic from the top/bottom τ = {p['tau']} tokens · NPMI over {p['window']}-word "
               f"windows of {p['corpus']} — a small corpus (~0.56M words): most word pairs never meet there and "
               "score −1, so absolute values are low; compare each topic with random word sets from the same pool. "
               "A bigger reference corpus: `--corpus PATH`.")
    cols = st.columns(2)
    for col, ts in zip(cols, sorted(sets, key=lambda t: t.polarity != "pos")):
        with col:
            st.markdown(f"**{'positive' if ts.polarity == 'pos' else 'negative'}** · pool {len(ts.pool)} words "
                        f"from {ts.n_tokens} tokens · {len(ts.stars)} stars")
            if not ts.topics:
                st.caption(f"no topic: {ts.reason}")
                continue
            chips = [topic_html(t.words, t.score, contributions(t.words, *ts.stars[t.star]), t.optimal)
                     for t in ts.topics]
            st.html(STYLE + "".join(chips[:5]))
            if len(chips) > 5:
                with st.expander(f"{len(chips) - 5} more topics"):
                    st.html(STYLE + "".join(chips[5:]))
    st.plotly_chart(scores_figure(sets), config={"displayModeBar": False})


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
            topics_section(model, layer, neuron)
        except Exception as exc:
            show_error(exc)
    elif tab == "graph":
        try:
            graph_section(model, run, rec, layer, neuron, window)
        except Exception as exc:
            show_error(exc)
    else:
        related_section(model.name, rec, layer, neuron)
    st.caption((f"run {rec.run_id} · corpus {rec.corpus_id} · {rec.stats.n_tokens:,} tokens · "
                           f"hook {rec.hook_point} · activation {model.act_fn}"))


render()
