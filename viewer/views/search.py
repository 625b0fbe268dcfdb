"""Search: units by what their explanations say (keyword or meaning), by token (from the harvest's token table), by
graph pattern, by topic word, and by statistics."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from analysis.n2g.evaluate import FIRING_FRACTION
from analysis.n2g.graph import contains_sequence
from analysis.types import MLP
from viewer.components.build import building_caption
from viewer.components.heatmap import md_escape
from viewer.components.picker import source_label, unit_link, unit_url
from viewer.resources import cached_models, db_path, keyword_index, missing_vectors, read, run_job, vector_index

SORT_LABELS = {"max": "highest max", "kurtosis": "highest kurtosis", "sparsest": "sparsest (lowest fraction > 0)",
               "densest": "densest", "skewness": "highest skew", "min": "most negative"}


EMBED_IN_PAGE = 500  # at most this many missing explanation vectors are computed from the page (~5 s); more: CLI


def explanation_search(s, name: str, model) -> bool:
    """Units by what their explanations say: BM25 over the words, or sentence-vector similarity. True when the
    user asks to embed the missing explanations now."""
    from analysis.jobs.embed import search_explanations

    st.subheader("Which units do their explanations describe?")
    qp = st.query_params
    if "search_q" not in st.session_state:
        st.session_state["search_q"] = qp.get("q", "")
    c1, c2 = st.columns([3, 1])
    query = c1.text_input("words or a description", key="search_q", placeholder="e.g. rivers and lakes")
    how = c2.radio("match", ["keyword", "meaning"], horizontal=True, key="search_how",
                   help="keyword: BM25 over the explanation words; meaning: cosine similarity of all-MiniLM-L6-v2 "
                        "sentence vectors (finds 'lakes and streams' for 'water')")
    qp["q"] = query
    missing = missing_vectors(s, model.model_id) if how == "meaning" else 0
    ask = False
    if missing:
        if missing <= EMBED_IN_PAGE:
            ask = st.button(f"embed the {missing} explanation(s) without a vector now")
        st.caption(f"{missing} explanation(s) have no sentence vector yet and cannot be found by meaning: "
                   f"`python -m analysis embed --db {s.path}`")
    if not query.strip():
        return ask
    hits = search_explanations(s, name, query, how, limit=20,
                               keywords=keyword_index(s, model.model_id) if how == "keyword" else None,
                               vectors=vector_index(s, model.model_id) if how == "meaning" else None)
    if not hits:
        st.caption("no explanation matches" + (" those words (stop words are ignored)" if how == "keyword" else ""))
    for h in hits:
        st.markdown(f"- {unit_link(name, h.unit, tab='explanations')} · {h.match:.3f} · {md_escape(h.text)} "
                    f"({h.explainer})")
    return ask


def token_search(s, name: str, model, runs: list) -> None:
    st.subheader("Which neurons fire most on a token?")
    qp = st.query_params
    if "search_token" not in st.session_state:
        st.session_state["search_token"] = qp.get("token", " Paris")
    text = st.text_input("token (exact; a leading space is tried too)", key="search_token")
    qp["token"] = text
    rank = st.radio("rank by", ["z", "mean"], horizontal=True, key="search_rank",
                    format_func={"z": "z-score (vs the neuron's own spread)", "mean": "mean activation"}.get)
    if not text:
        return
    hits = s.catalog.token_ids(model.tokenizer_id, text)
    if not hits:
        st.warning(f"{text!r} is not a single token of {name}'s vocabulary")
    for hit in hits:
        rows = [row for run in runs for row in s.records.units_for_token(run.run_id, hit.token_id, limit=15, rank=rank)]
        rows.sort(key=lambda r: -(r.z if rank == "z" and r.z is not None else r.mean))
        st.markdown(f"**{hit.token!r}** (id {hit.token_id}): " + (", ".join(
            f"{unit_link(name, r.unit)} mean {r.mean:.3g}, z {r.z:.1f} (n={r.count})" if r.z is not None else
            f"{unit_link(name, r.unit)} mean {r.mean:.3g} (n={r.count})" for r in rows[:15])
            or "not in the token table (too rare in the corpus)"))


QUERY_ESCAPES = {"n": "\n", "t": "\t", "|": "|", "\\": "\\"}


def query_tokens(text: str) -> list[str]:
    """The token strings of a graph query: '|' between tokens; ``\\n``, ``\\t``, ``\\|`` and ``\\\\`` a newline,
    a tab, a bar and a backslash. Empty parts are dropped; whitespace is kept (' ' is the space token)."""
    parts, part, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and text[i + 1 : i + 2] in QUERY_ESCAPES:
            part.append(QUERY_ESCAPES[text[i + 1]])
            i += 2
            continue
        if c == "|":
            parts.append("".join(part))
            part = []
        else:
            part.append(c)
        i += 1
    parts.append("".join(part))
    return [p for p in parts if p]


def graph_search(s, name: str, model, runs: list) -> None:
    """Units whose Neuron2Graph graph contains a token or a token sequence (reading order, '|' between)."""
    st.subheader("Which neurons' graphs contain a token sequence?")
    qp = st.query_params
    if "search_graph" not in st.session_state:
        st.session_state["search_graph"] = qp.get("graph", " except")
    text = st.text_input("tokens in reading order, separated by | (e.g. ` for| example`; `\\n` a newline, `\\|` a "
                         "bar)", key="search_graph")
    qp["graph"] = text
    parts = query_tokens(text)
    if not parts:
        return
    sequence = [{hit.token_id for hit in s.catalog.token_ids(model.tokenizer_id, p)} for p in parts]
    missing = [p for p, ids in zip(parts, sequence) if not ids]
    if missing:
        st.warning(f"not single tokens of {name}'s vocabulary: {', '.join(map(repr, missing))}")
        return
    found: dict = {}
    for run in runs:
        for tid in sequence[0]:
            for unit, pats in s.graphs.firing_patterns_with(run.run_id, tid, FIRING_FRACTION).items():
                hits = [(p, v) for p, v in pats if contains_sequence(p, sequence)]
                if hits:
                    found[unit] = hits
    if not found:
        st.caption("no graph contains it (graphs exist for: "
                   + (", ".join(f"L{q.layer} ({q.n_graphs})" for run in runs for q in s.graphs.quality(run.run_id))
                      or "none yet") + "; build more with `python -m analysis n2g`)")
        return
    ranked = sorted(found.items(), key=lambda kv: -max(v for _p, v in kv[1]))
    vocab = s.catalog.vocab(model.tokenizer_id, [t for _k, hits in ranked[:25] for p, _v in hits for t in p if t >= 0])
    rows = []
    for unit, hits in ranked[:25]:
        p, v = max(hits, key=lambda h: h[1])
        rows.append({"layer": unit.layer, "neuron": unit_url(name, unit, tab="graph"),
                     "strongest pattern (reading order)": " ".join("…" if t < 0 else repr(vocab.get(t, t))
                                                                   for t in reversed(p)),
                     "activation": v, "patterns with it": len(hits)})
    st.caption(f"{len(found)} neuron(s), strongest first (the neuron's graph tab opens from the link)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "neuron": st.column_config.LinkColumn(display_text=r"neuron=(\d+)")})


def topic_search(s, name: str, model) -> None:
    """Units (and residual dimensions) with a word-pool topic containing a word."""
    from analysis.topics.types import RESID

    st.subheader("Which neurons have a topic with a word?")
    qp = st.query_params
    if "search_topic" not in st.session_state:
        st.session_state["search_topic"] = qp.get("topic", "")
    word = st.text_input("a word (lower case, as in the reference corpus)", key="search_topic").strip().lower()
    qp["topic"] = word
    if not word:
        return
    hits = s.topics.with_word(model.model_id, word)
    if not hits:
        st.caption(f"no stored topic contains {word!r} (topics are computed per neuron on its topics tab, or for a "
                   "layer with `python -m analysis topics`)")
        return
    st.dataframe(pd.DataFrame([
        {"layer": h.unit.layer,
         "unit": unit_url(name, h.unit, tab="topics") if h.unit.source != RESID else f"dim {h.unit.index}",
         "source": h.mode, "polarity": h.polarity, "topic NPMI": h.score, "topic": " ".join(h.words)}
        for h in hits]), hide_index=True, column_config={"unit": st.column_config.LinkColumn(display_text=r"neuron=(\d+)")})


def dictionaries(s) -> dict:
    return {d.source: d for d in s.catalog.dictionaries()}


def stats_search(s, name: str, runs: list):
    """Units of a layer by one statistic: returns the rows to show (read while the database is open)."""
    st.subheader("Units by statistic")
    run_layers = sorted({l for r in runs for l in r.layers})
    if not run_layers:
        st.info("no finished harvest for this model")
        return None
    c1, c2, c3 = st.columns(3)
    layer = c1.selectbox("layer", run_layers)
    at_layer = [r for r in runs if layer in r.layers]
    sources = list(dict.fromkeys(r.source for r in at_layer))
    source = c2.selectbox("units", sources, format_func=lambda x: source_label(x, dictionaries(s)))
    sort = c3.selectbox("order", list(SORT_LABELS), format_func=SORT_LABELS.get)
    run = next(r for r in at_layer if r.source == source)
    return s.records.units_by(run.run_id, layer, sort, limit=25, source=run.source)


def render() -> None:
    st.title("Search")
    building_caption(db_path(), ("baselines", "explain", "n2g", "topics"))
    qp = st.query_params

    def load(s):
        models = cached_models(s)
        if not models:
            return None
        names = sorted({m.name for m in models})
        if "search_model" not in st.session_state:
            st.session_state["search_model"] = qp["model"] if qp.get("model") in names else names[0]
        name = st.selectbox("model", names, key="search_model")
        qp["model"] = name
        model = s.catalog.model(name)
        runs = s.runs.finished(model.model_id, source=None)
        if explanation_search(s, name, model):
            return name, "embed"
        token_search(s, name, model, runs)
        graph_search(s, name, model, runs)
        topic_search(s, name, model)
        return name, stats_search(s, name, runs)

    data = read(load)
    if data is None or data[1] is None:
        return
    name, rows = data
    if rows == "embed":
        from analysis.jobs.embed import EmbedJob, embed_explanations

        run_job("embedding explanations…", lambda db, progress: embed_explanations(EmbedJob(model=name), db,
                                                                                    progress))
        return
    noun = "neuron" if not rows or rows[0].unit.source == MLP else "feature"
    st.markdown(f"| {noun} | max | mean | std | skew | kurtosis | frac > 0 |\n|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {unit_link(name, r.unit)} | {r.max:.3g} | {r.mean:.3g} | {r.std:.3g} | {r.skewness:.3g} | "
        f"{r.kurtosis:.3g} | {r.frac_active:.3f} |" for r in rows))


render()
