"""What is cached, and how to build more."""

from __future__ import annotations

import streamlit as st

from analysis.jobs.build.status import read_status
from viewer.components.build import build_panel
from viewer.resources import db_path, read


def _quality(meta: dict) -> dict:
    q = meta.get("quality") or meta
    fmt = {"fvu": "{:.3f}", "l0": "{:.1f}", "dead_fraction": "{:.1%}", "loss_recovered": "{:.1%}",
           "loss_clean": "{:.3f}", "loss_spliced": "{:.3f}", "loss_with_error": "{:.3f}"}
    return {name: (f.format(q[name]) if isinstance(q.get(name), (int, float)) else "") for name, f in fmt.items()}


@st.fragment(run_every=5)
def build_section() -> None:
    """The build's progress; while it runs, this part reruns every few seconds."""
    build_panel(db_path())
    status = read_status(db_path())
    if status is not None and not status.running and st.session_state.get("build_was_running"):
        st.session_state["build_was_running"] = False
        st.rerun()  # the build ended: the whole page shows what it wrote
    st.session_state["build_was_running"] = bool(status and status.running)


def render() -> None:
    st.title("What is cached")
    st.caption(f"database: {db_path()}")
    build_section()
    data = read(lambda s: (s.catalog.models(), s.catalog.corpora(), s.runs.list(), s.catalog.dictionaries()))
    if data is None:
        return
    models, corpora, runs, dictionaries = data
    if not runs:
        st.info("Nothing harvested yet. `make demo` builds the demo cache; any model and corpus: "
                "`python -m analysis harvest --model NAME --corpus NAME --db PATH`.")
    by_id = {m.model_id: m for m in models}
    widths = {d.source: d.d_sae for d in dictionaries}
    rows = []
    for r in runs:
        m = by_id.get(r.model_id)
        per_layer = widths.get(r.source, m.d_mlp if m else 0)
        rows.append({"model": m.name if m else r.model_id, "architecture": m.architecture if m else "", "units": r.source,
                     "corpus": r.corpus_id, "layers": f"{len(r.layers)} ({min(r.layers)}–{max(r.layers)})",
                     "unit count": len(r.layers) * per_layer, "tokens": r.n_tokens, "status": r.status,
                     "run": r.run_id, "finished": r.finished_at})
    if rows:
        st.dataframe(rows, hide_index=True)
    if dictionaries:
        st.subheader("Dictionaries (SAEs and baseline directions)")
        st.caption("Quality on held-out tokens: FVU = fraction of variance unexplained; L0 = active features per "
                   "token; dead = never active; loss recovered = (zero-ablation − spliced) / (zero-ablation − clean) "
                   "next-token loss.")
        st.dataframe([{"name": d.name, "model": by_id[d.model_id].name if d.model_id in by_id else d.model_id,
                       "kind": d.kind, "architecture": d.architecture + (f" k={d.k}" if d.k else ""),
                       "layer": d.layer, "site": d.site, "features": d.d_sae, **_quality(d.meta),
                       "format": d.format, "folder": d.path, "source id": d.source} for d in dictionaries],
                     hide_index=True)
    st.subheader("Corpora")
    st.dataframe([{"corpus": c.corpus_id, "documents": c.n_docs, "characters": c.n_chars, "source": c.source}
                  for c in corpora], hide_index=True)
    st.subheader("Build more")
    st.code("python -m analysis harvest --model smollm2-135m --corpus enwiki-sample --layers all --max-tokens 500000 "
            f"--db {db_path()}\npython -m analysis sae train --model smollm2-135m --layer 15 --width 4608 --k 32 "
            "--out SAE_DIR\n"
            f"python -m analysis harvest --model smollm2-135m --sae SAE_DIR --db {db_path()}\n"
            "python -m analysis models    # what models can be used\n"
            "python -m analysis corpora   # what corpora can be used", language="bash")


render()
