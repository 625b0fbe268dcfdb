"""What is cached, and how to build more."""

from __future__ import annotations

import streamlit as st

from viewer.resources import db_path, read


def render() -> None:
    st.title("What is cached")
    st.caption(f"database: {db_path()}")
    data = read(lambda s: (s.catalog.models(), s.catalog.corpora(), s.runs.list()))
    if data is None:
        return
    models, corpora, runs = data
    if not runs:
        st.info("Nothing harvested yet. `make demo` builds the demo cache; any model and corpus: "
                "`python -m analysis harvest --model NAME --corpus NAME --db PATH`.")
    by_id = {m.model_id: m for m in models}
    rows = []
    for r in runs:
        m = by_id.get(r.model_id)
        rows.append({"model": m.name if m else r.model_id, "architecture": m.architecture if m else "", "units": r.source,
                     "corpus": r.corpus_id, "layers": f"{len(r.layers)} ({min(r.layers)}–{max(r.layers)})",
                     "neurons": len(r.layers) * (m.d_mlp if m else 0), "tokens": r.n_tokens, "status": r.status,
                     "run": r.run_id, "finished": r.finished_at})
    if rows:
        st.dataframe(rows, hide_index=True)
    st.subheader("Corpora")
    st.dataframe([{"corpus": c.corpus_id, "documents": c.n_docs, "characters": c.n_chars, "source": c.source}
                  for c in corpora], hide_index=True)
    st.subheader("Build more")
    st.code("python -m analysis harvest --model smollm2-135m --corpus enwiki-sample --layers all --max-tokens 500000 "
            f"--db {db_path()}\npython -m analysis models    # what models can be used\n"
            "python -m analysis corpora   # what corpora can be used", language="bash")


render()
