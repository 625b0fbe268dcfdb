"""Search: neurons by token (from the harvest's token table) and by statistics."""

from __future__ import annotations

import streamlit as st

from viewer.components.picker import neuron_link
from viewer.resources import cached_models, show_error, store


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
