"""Unit page (an MLP neuron, or a dictionary feature): stats, histogram, top / quantile / random records as
heatmaps, related tokens and units, explanations, its Neuron2Graph graph and its word-pool topics.

The page reads everything it shows in one short read-only visit per part and hands it to the components;
"compute now" buttons run jobs (``viewer.resources.run_job``)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.types import MLP, UnitId
from viewer.components.build import coming, still_building
from viewer.components.charts import histogram_html, short_number
from viewer.components.explanations import (baseline_line, explanations_panel, own_explanation_form,
                                            own_explanation_result, similar_line)
from viewer.components.export import neuron_page_html
from viewer.components.glance import glance_header
from viewer.components.graph import graph_panel
from viewer.components.heatmap import md_escape, records_html
from viewer.components.picker import list_url, unit_label, unit_link, unit_title, unit_url
from viewer.components.topics import topic_controls, topics_view
from viewer.resources import (db_path, live_simulators, pick_unit, read, run_job, save_explanation, score_live,
                              show_error, subject, unit_record, vector_index)
from viewer.site import page_name

TABS = ["top", "quantiles", "random", "tokens & weights", "explanations", "graph", "topics", "ablation"]


def harvest_button(model: str, layer: int, corpus: str, source: str = MLP) -> None:
    from analysis.jobs.harvest import HarvestJob, harvest

    if source != MLP:
        d = read(lambda s: s.catalog.dictionary(source))
        st.warning(f"the features of {source} are not harvested in this cache.")
        if d is not None and d.path:
            st.caption(f"harvest them from a shell: `python -m analysis harvest --model {model} --corpus {corpus} "
                       f"--sae {d.path} --db {db_path()}`")
        return
    st.warning(f"layer {layer} of {model} is not in this cache.")
    tokens = st.select_slider("tokens to harvest", [10_000, 25_000, 50_000, 100_000], value=25_000)
    if st.button(f"harvest layer {layer} now"):
        run_job(f"harvesting layer {layer} over {tokens:,} tokens…", lambda db, progress: harvest(
            HarvestJob(model=model, corpus=corpus, layers=str(layer), max_tokens=tokens), db, progress))
    st.caption(f"or from a shell: `python -m analysis harvest --model {model} --corpus {corpus} --layers {layer} "
               f"--db {db_path()}`")


def token_tables(tokenizer, columns: list[list[tuple[str, list]]]) -> None:
    """Weight-linked tokens as tables, side by side: one list of (title, WeightLinks) per column."""
    for col, tables in zip(st.columns(len(columns)), columns):
        for title, links in tables:
            col.markdown(title)
            col.dataframe(pd.DataFrame([{"token": repr(tokenizer.decode([l.token_id])), "weight": l.weight}
                                        for l in links]), hide_index=True)


def related_section(model_name: str, rec) -> None:
    st.markdown("**Activation-based**: tokens with the highest mean activation (tokens seen at least 3 times)")
    if rec.top_tokens:
        st.dataframe(pd.DataFrame([{"token": repr(t), "mean act": m, "count": c} for _, t, m, c in rec.top_tokens]),
                     hide_index=True, height=250)
    if not st.toggle("weight-based related tokens and units (loads the model)", key="weights_on"):
        return
    if rec.unit.source != MLP:
        feature_weights_section(model_name, rec)
        return
    from analysis.weights import related_weights

    try:
        subj = subject(model_name)
        rel = related_weights(subj, rec.unit.layer, rec.unit.index, k=10)
    except Exception as exc:  # the model may be unavailable here (hub model offline)
        show_error(exc)
        return
    st.caption(rel.note)
    token_tables(subj.tokenizer, [[("input tokens (+)", rel.input_tokens_pos),
                                   ("input tokens (−)", rel.input_tokens_neg)],
                                  [("output tokens (+)", rel.output_tokens_pos),
                                   ("output tokens (−)", rel.output_tokens_neg)]])
    for title, pos, neg in [("upstream neurons", rel.upstream_pos, rel.upstream_neg),
                            ("downstream neurons", rel.downstream_pos, rel.downstream_neg)]:
        st.markdown(f"**{title}** — most positive: " + ", ".join(
            f"{unit_link(model_name, UnitId(MLP, l.layer, l.neuron))} ({l.weight:+.3f})" for l in pos))
        st.markdown("most negative: " + ", ".join(
            f"{unit_link(model_name, UnitId(MLP, l.layer, l.neuron))} ({l.weight:+.3f})" for l in neg))


def feature_weights_section(model_name: str, rec) -> None:
    from analysis.weights import feature_weights
    from viewer.resources import dictionary

    unit = rec.unit
    try:
        d = read(lambda s: s.catalog.dictionary(unit.source))
        subj, sae = subject(model_name), dictionary(unit.source, d.path if d else "")
        rel = feature_weights(subj, sae, unit.index, k=10)
    except Exception as exc:  # the model or the SAE folder may be unavailable here
        show_error(exc)
        return
    st.caption(rel.note)
    token_tables(subj.tokenizer, [[("output tokens (+): decoder direction → unembedding", rel.output_tokens_pos),
                                   ("output tokens (−)", rel.output_tokens_neg)],
                                  [("input tokens (+): embedding → encoder", rel.input_tokens_pos),
                                   ("input tokens (−)", rel.input_tokens_neg)]])
    st.markdown("**nearest features** (decoder cosine): " + ", ".join(
        f"{unit_link(model_name, UnitId(unit.source, l.layer, l.neuron), f'F{l.neuron}')} ({l.weight:.2f})"
        for l in rel.nearest))
    if rel.neurons:
        st.markdown("**neurons it reads most** (cosine of the encoder with their output directions): " + ", ".join(
            f"{unit_link(model_name, UnitId(MLP, l.layer, l.neuron))} ({l.weight:+.2f})" for l in rel.neurons))


def graph_tab(model, rec, window: int | None) -> None:
    from analysis.jobs.n2g import N2GJob, n2g

    unit = rec.unit

    def load(s):
        g = s.graphs.get(rec.run_id, unit)
        if g is None:
            return None, {}, {}
        vocab = s.catalog.vocab(model.tokenizer_id, [t for p, _ in g.patterns for t in p if t >= 0])
        return g, vocab, s.graphs.layer_patterns(rec.run_id, unit.layer, unit.source)

    data = read(load)
    if data is None:
        return
    g, vocab, others = data
    if g is None:
        if not still_building(db_path(), "n2g", unit):
            st.info(f"No Neuron2Graph graph for this {'neuron' if unit.source == MLP else 'feature'} yet: fitting "
                    "one takes a few seconds on CPU, plus loading the model.")
        if st.button("build the graph now"):
            run_job(f"fitting the graph of L{unit.layer} {unit_label(unit)}…", lambda db, progress: n2g(
                N2GJob(layer=unit.layer, neurons=str(unit.index), model=model.name, source=unit.source), db, progress))
        st.caption(f"or from a shell, a whole layer: `python -m analysis n2g --model {model.name} --layer "
                   f"{unit.layer} --db {db_path()}`")
        return
    from analysis.n2g.pipeline import graph_panel_data

    graph_panel(model.name, g, vocab, graph_panel_data(rec, g.patterns, g.params, others), rec, window)


def topics_tab(model, rec) -> None:
    from analysis.jobs.topics import TopicsJob, topics

    mode, unit = topic_controls(rec.unit)
    sets = read(lambda s: s.topics.sets(model.model_id, unit, mode))
    if sets is None:
        return
    what = f"L{unit.layer} " + (f"residual dimension {unit.index}" if mode.startswith("lo") else unit_label(unit))
    if not sets:
        from analysis.topics.types import NpmiConfig

        counted = npmi_counted()
        if not still_building(db_path(), "topics", rec.unit):
            st.info(f"No topics for {what} ({mode}) yet: about a second once the model is loaded" +
                    ("." if counted else f", after counting NPMI over {', '.join(NpmiConfig().corpora)} once (about "
                     "90 s here; `make demo` does it)."))
        if st.button("compute topics now"):
            run_job(f"topics of {what} ({mode})…", lambda db, progress: topics(
                TopicsJob(layer=unit.layer, neurons=str(unit.index), model=model.name, source=rec.unit.source,
                          modes=(mode,)), db, progress))
        st.caption(f"or a whole layer from a shell: `python -m analysis topics --model {model.name} --layer "
                   f"{unit.layer} --db {db_path()}`")
        return
    topics_view(sets)


def ablation_tab(model, rec) -> None:
    """The unit's stored ablation effect, and a live ablation on one of its top records."""
    from analysis.causal import ablate_unit
    from viewer.components.causal import ablation_view, effects_view
    from viewer.resources import dictionary, hooks_lock

    def load(s):
        stored = s.effects.get(rec.run_id, rec.unit)
        names = s.catalog.vocab(model.tokenizer_id, [t for t, _v in stored.promoted + stored.suppressed]) if stored \
            else {}
        return stored, names, (d.path if (d := s.catalog.dictionary(rec.unit.source)) else "")

    found = read(load)
    if found is None:
        return
    stored, names, sae_path = found
    if not (stored is None and still_building(db_path(), "effects", rec.unit)):
        effects_view(stored, names)
    recs = rec.most_positive_activation_records
    if not recs:
        return
    c1, c2 = st.columns([1, 2])
    i = c1.selectbox("top record", range(len(recs)), format_func=lambda i: f"#{i + 1}", key="abl_rec")
    mode = c2.radio("set the unit to", ["zero", "mean"], horizontal=True, key="abl_rec_mode",
                    format_func={"zero": "0", "mean": "its harvest mean"}.get)
    if not st.toggle("ablate it on this record (loads the model)", key="abl_rec_on"):
        return
    try:
        subj = subject(model.name)
        sae = dictionary(rec.unit.source, sae_path) if rec.unit.source != MLP else None
        with st.spinner("ablating…"), hooks_lock(model.name):
            a = ablate_unit(subj, list(recs[i].token_ids), rec.unit, mode, rec.stats, sae=sae)
    except Exception as exc:
        show_error(exc)
        return
    ablation_view(a, recs[i].runs, subj.tokenizer, key="abl_rec")


def npmi_counted() -> bool:
    """Whether the default NPMI statistics exist for this database (topics then take about a second)."""
    from analysis.jobs.topics import stats_folder
    from analysis.topics.npmi import stats_path
    from analysis.topics.types import NpmiConfig

    return stats_path(NpmiConfig(), stats_folder(db_path())).exists()


def similar_units(s, model, rec):
    """Units whose explanations are nearest to this unit's best (else newest) explanation by sentence vector:
    (its text, hits), or None when it has no explanation; hits None when its vector is not computed yet."""
    from analysis.jobs.embed import nearest_explanations

    best = s.explanations.best(rec.run_id, rec.unit)
    texts = [e for e in s.explanations.of_unit(rec.run_id, rec.unit) if e.explainer != "n2g"]
    e = best[0] if best else (texts[-1] if texts else None)
    if e is None:
        return None
    vectors = vector_index(s, model.model_id)
    row = vectors[2].get(e.explanation_id)
    if row is None:  # no vector yet (the kept index is of this version of the file)
        return e.text, None
    return e.text, nearest_explanations(s, vectors, vectors[1].row(row), 8, not_unit=rec.unit)


def compute_now(lens: str, model, rec) -> None:
    """Run the cheap lens the glance header asked for."""
    from analysis.jobs.n2g import N2GJob, n2g
    from analysis.jobs.score import ScoreJob, score
    from analysis.jobs.topics import TopicsJob, topics

    u, what = rec.unit, f"L{rec.unit.layer} {unit_label(rec.unit)}"
    if lens == "baseline":
        run_job(f"token-lookup baseline of {what}…", lambda db, progress: score(ScoreJob(
            layer=u.layer, neurons=str(u.index), model=model.name, source=u.source, simulator="token-lookup"),
            db, progress))
    elif lens == "graph":
        run_job(f"fitting the graph of {what}…", lambda db, progress: n2g(
            N2GJob(layer=u.layer, neurons=str(u.index), model=model.name, source=u.source), db, progress))
    elif lens == "effects":
        from analysis.jobs.causal import EffectsJob, effects_of

        run_job(f"ablation effect of {what}…", lambda db, progress: effects_of(EffectsJob(
            layer=u.layer, neurons=str(u.index), model=model.name, source=u.source), db, progress))
    elif lens == "topics":
        run_job(f"topics of {what}…", lambda db, progress: topics(
            TopicsJob(layer=u.layer, neurons=str(u.index), model=model.name, source=u.source,
                      modes=("hi-c", "activation")),
            db, progress))


def add_to_list_form(model, unit: UnitId, lists: tuple[list[str], list[str]]) -> None:
    """Put this unit on a list (an existing one, or a new one by name) with a note."""
    from analysis.jobs.lists import add_to_list

    names, on = lists
    if on:
        st.markdown("on " + ", ".join(f"[{md_escape(n)}]({list_url(n)})" for n in on))
    with st.form("add_to_list"):
        pick = st.selectbox("list", names, key="list_pick") if names else None
        new = st.text_input("or a new list", key="list_new", placeholder="its name")
        note = st.text_input("note", key="list_note", placeholder="why this unit")
        if st.form_submit_button("add"):
            name = (new or pick or "").strip()
            try:
                add_to_list(db_path(), name, model.name, unit, note)
            except Exception as exc:
                show_error(exc)
                return
            st.success(f"added to {name}")


def render() -> None:
    def load(s):
        if (found := pick_unit(s)) is None:
            return None
        picked, run = found
        rec = unit_record(s, run, picked.unit) if run else None
        corpus = (s.catalog.corpus_arg(r.corpus_id) if rec is None and (r := s.runs.find(picked.model.name))
                  else None)
        lists = (s.lists.names(), s.lists.containing(picked.model.model_id, picked.unit))
        return picked, rec, corpus, (s.glance(picked.model.model_id, rec) if rec else None), lists

    data = read(load)
    if data is None:
        return
    picked, rec, corpus, glance, lists = data
    model, unit = picked.model, picked.unit
    if picked.problem:
        st.error(picked.problem)
    t1, t2, t3 = st.columns([8, 1.3, 1.3], vertical_alignment="center")
    t1.title(unit_title(model.name, unit))
    if rec is None:
        from analysis.config import DEFAULT_CORPUS

        harvest_button(model.name, unit.layer, corpus or DEFAULT_CORPUS, unit.source)
        return
    t2.download_button("Export HTML", lambda: neuron_page_html(rec, model.name, glance),
                       file_name=f"{model.name}-{page_name(unit)}".replace("/", "_"), mime="text/html",
                       help="this page as one HTML file that opens offline (records, statistics, what each lens says)")
    with t3.popover("add to list"):
        add_to_list_form(model, unit, lists)
    if (lens := glance_header(glance, lambda tab: unit_url(model.name, unit, tab), npmi_counted(),
                              coming(db_path(), unit))) is not None:
        compute_now(lens, model, rec)
    s = rec.stats
    cols = st.columns(7)
    for col, (label, val) in zip(cols, [("max", s.max), ("mean", s.mean), ("std", s.std), ("skew", s.skewness),
                                        ("kurtosis", s.kurtosis), ("frac > 0", s.frac_active), ("min", s.min)]):
        col.metric(label, short_number(val))
    histogram_section(s)
    records_section(model, rec)


@st.fragment
def histogram_section(stats) -> None:
    """The histogram with its log toggle (a toggle reruns only this part)."""
    log_y = st.toggle("log y", value=True, key="log_y")
    st.html(histogram_html(stats, log_y))


@st.fragment
def records_section(model, rec) -> None:
    """The tab picker and the picked tab (a tab switch reruns only this part; the URL follows it)."""
    unit, vmax = rec.unit, max(rec.stats.max, 1e-9)
    qp = st.query_params
    tab = qp.get("tab", "top") if qp.get("tab") in TABS else "top"
    c1, c2 = st.columns([6, 2])
    tab = c1.segmented_control("records", TABS, default=tab, key="tab_sel", label_visibility="collapsed") or "top"
    qp["tab"] = tab
    around = c2.toggle("±8 tokens around each max", value=qp.get("around") == "1", key="around_sel")
    qp["around"] = "1" if around else "0"
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
        found = read(lambda s_: (s_.explanations.with_simulations(rec.run_id, unit),
                                 s_.explanations.baselines(rec.run_id, unit), similar_units(s_, model, rec)))
        if found is not None:
            rows, baselines, similar = found
            if not baselines:
                still_building(db_path(), "baselines", unit)
            if baseline_line(baselines):
                compute_now("baseline", model, rec)
            explanations_panel(rows, baselines, rec)
            asked = own_explanation_form(list(live_simulators()))
            if to_save := own_explanation_result(rec, asked, score_live(rec, asked)):
                save_explanation(rec, to_save)
            similar_line(model.name, similar)
    elif tab == "topics":
        topics_tab(model, rec)
    elif tab == "graph":
        graph_tab(model, rec, window)
    elif tab == "ablation":
        ablation_tab(model, rec)
    else:
        related_section(model.name, rec)
    st.caption((f"run {rec.run_id} · corpus {rec.corpus_id} · {rec.stats.n_tokens:,} tokens · "
                f"hook {rec.hook_point}" + (f" · activation {model.act_fn}" if unit.source == MLP else "")))


render()
