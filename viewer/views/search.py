"""Search: neurons by token (from the harvest's token table) and by statistics."""

from __future__ import annotations

import streamlit as st

import pandas as pd

from analysis.n2g.graph import contains_sequence
from viewer.components.picker import neuron_link, neuron_url
from viewer.resources import cached_models, show_error, store


def graph_search(s, name: str, model) -> None:
    """Neurons whose Neuron2Graph graph contains a token or a token sequence (reading order, '|' between)."""
    st.subheader("Which neurons' graphs contain a token sequence?")
    qp = st.query_params
    if "search_graph" not in st.session_state:
        st.session_state["search_graph"] = qp.get("graph", " except")
    text = st.text_input("tokens in reading order, separated by | (e.g. ` for| example`)", key="search_graph")
    qp["graph"] = text
    parts = [p for p in text.split("|") if p.strip()]
    if not parts:
        return
    sequence = [{tid for tid, _t in s.token_ids(model.tokenizer_id, p)} for p in parts]
    missing = [p for p, ids in zip(parts, sequence) if not ids]
    if missing:
        st.warning(f"not single tokens of {name}'s vocabulary: {', '.join(map(repr, missing))}")
        return
    runs = [r for r in s.runs() if r.model_id == model.model_id and r.status == "done"]
    found: dict[tuple[int, int], list] = {}
    for run in runs:
        for tid in sequence[0]:
            for key, pats in s.n2g_patterns_with(run.run_id, tid).items():
                hits = [(p, v) for p, v in pats if contains_sequence(p, sequence)]
                if hits:
                    found[key] = hits
    if not found:
        st.caption("no graph contains it (graphs exist for: "
                   + (", ".join(f"L{l} ({n})" for run in runs for l, n, *_ in s.n2g_quality(run.run_id)) or "none yet")
                   + "; build more with `python -m analysis n2g`)")
        return
    ranked = sorted(found.items(), key=lambda kv: -max(v for _p, v in kv[1]))
    vocab = s.vocab(model.tokenizer_id, [t for _k, hits in ranked[:25] for p, _v in hits for t in p if t >= 0])
    rows = []
    for (layer, unit), hits in ranked[:25]:
        p, v = max(hits, key=lambda h: h[1])
        rows.append({"layer": layer, "neuron": neuron_url(name, layer, unit, tab="graph"),
                     "strongest pattern (reading order)": " ".join("…" if t < 0 else repr(vocab.get(t, t))
                                                                   for t in reversed(p)),
                     "activation": v, "patterns with it": len(hits)})
    st.caption(f"{len(found)} neuron(s), strongest first (the neuron's graph tab opens from the link)")
    st.dataframe(pd.DataFrame(rows), hide_index=True, column_config={
        "neuron": st.column_config.LinkColumn(display_text=r"neuron=(\d+)")})


def topic_search(s, name: str, model) -> None:
    """Neurons (and residual dimensions) with a word-pool topic containing a word."""
    st.subheader("Which neurons have a topic with a word?")
    qp = st.query_params
    if "search_topic" not in st.session_state:
        st.session_state["search_topic"] = qp.get("topic", "")
    word = st.text_input("a word (lower case, as in the reference corpus)", key="search_topic").strip().lower()
    qp["topic"] = word
    if not word:
        return
    rows = s.units_with_topic_word(model.model_id, word)
    if not rows:
        st.caption(f"no stored topic contains {word!r} (topics are computed per neuron on its topics tab, or for a "
                   "layer with `python -m analysis topics`)")
        return
    st.dataframe(pd.DataFrame([
        {"layer": l, "unit": (neuron_url(name, l, u, tab="topics") if not src.startswith("lo") else f"dim {u}"),
         "source": src, "polarity": pol, "topic NPMI": sc, "topic": " ".join(words)}
        for l, u, src, pol, sc, words in rows]), hide_index=True,
        column_config={"unit": st.column_config.LinkColumn(display_text=r"neuron=(\d+)")})


def render() -> None:
    st.title("Search")
    qp = st.query_params
    try:
        with store() as s:
            models = cached_models(s)
            if not models:
                return
            names = sorted({m.name for m in models})
            if "search_model" not in st.session_state:
                st.session_state["search_model"] = qp["model"] if qp.get("model") in names else names[0]
            name = st.selectbox("model", names, key="search_model")
            model = s.model(name)
            qp["model"] = name
            st.subheader("Which neurons fire most on a token?")
            if "search_token" not in st.session_state:
                st.session_state["search_token"] = qp.get("token", " Paris")
            text = st.text_input("token (exact; a leading space is tried too)", key="search_token")
            qp["token"] = text
            rank = st.radio("rank by", ["z", "mean"], horizontal=True, key="search_rank",
                            format_func={"z": "z-score (vs the neuron's own spread)", "mean": "mean activation"}.get)
            if text:
                runs = [r for r in s.runs() if r.model_id == model.model_id and r.status == "done"]
                hits = s.token_ids(model.tokenizer_id, text)
                if not hits:
                    st.warning(f"{text!r} is not a single token of {name}'s vocabulary")
                for token_id, token in hits:
                    rows = []
                    for run in runs:
                        rows += s.neurons_for_token(run.run_id, token_id, limit=15, rank=rank)
                    rows.sort(key=lambda r: -(r[4] if rank == "z" and r[4] is not None else r[2]))
                    st.markdown(f"**{token!r}** (id {token_id}): " + (", ".join(
                        f"{neuron_link(name, l, u)} mean {m:.3g}, z {z:.1f} (n={c})" if z is not None else
                        f"{neuron_link(name, l, u)} mean {m:.3g} (n={c})" for l, u, m, c, z in rows[:15])
                        or "not in the token table (too rare in the corpus)"))
            graph_search(s, name, model)
            topic_search(s, name, model)
            st.subheader("Neurons by statistic")
            run_layers = sorted({l for r in s.runs() if r.model_id == model.model_id and r.status == "done" for l in r.layers})
            if not run_layers:
                st.info("no finished harvest for this model")
                return
            c1, c2 = st.columns(2)
            layer = c1.selectbox("layer", run_layers)
            labels = {"max": "highest max", "kurtosis": "highest kurtosis", "sparsest": "sparsest (lowest fraction > 0)",
                      "densest": "densest", "skewness": "highest skew", "min": "most negative"}
            sort = c2.selectbox("order", list(labels), format_func=labels.get)
            run = s.find_run(name, layer)
            rows = s.units_by(run.run_id, layer, sort, limit=25)
    except Exception as exc:
        show_error(exc)
        return
    st.markdown("| neuron | max | mean | std | skew | kurtosis | frac > 0 |\n|---|---|---|---|---|---|---|\n" + "\n".join(
        f"| {neuron_link(name, layer, u)} | {mx:.3g} | {mean:.3g} | {std:.3g} | {sk:.3g} | {ku:.3g} | {fa:.3f} |"
        for u, mx, mean, std, sk, ku, fa in rows))


render()
