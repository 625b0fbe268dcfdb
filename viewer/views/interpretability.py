"""Which kind of unit is more interpretable? Neurons vs SAE features vs transcoder features vs residual basis vs
random directions at one layer: per-metric box plots and medians over each kind's seeded sample (``python -m analysis compare-units``)."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from analysis.jobs.compare import KINDS, kind_table
from viewer.components.picker import unit_link
from viewer.resources import cached_models, db_path, read

METRICS = [("token_lookup", "token-lookup correlation score", "how far token identity alone predicts the unit"),
           ("n2g_f1", "Neuron2Graph firing F1", "held-out records"),
           ("n2g_margin", "N2G F1 − token-lookup F1", "what the graph's context adds over token identity"),
           ("topic_npmi", "best topic NPMI", "activation mode, positive end"),
           ("density", "activation density", "fraction of tokens with activation > 0")]
LABELS = {"neurons": "MLP neurons", "sae": "SAE features", "transcoder": "transcoder features",
          "basis": "residual basis", "random": "random directions"}


def render() -> None:
    st.title("Interpretability by kind of unit")

    def load(s):
        models = cached_models(s)
        if not models:
            return None
        name = st.selectbox("model", sorted({m.name for m in models}))
        model = s.catalog.model(name)
        saes = [d for d in s.catalog.dictionaries(model.model_id) if d.kind == "sae"]
        if not saes:
            return name, None, None
        d = st.selectbox("SAE", saes, format_func=lambda d: f"{d.name} (L{d.layer} {d.site}, {d.d_sae:,} features)")
        tcs = [t for t in s.catalog.dictionaries(model.model_id) if t.kind == "transcoder" and t.layer == d.layer]
        tc = st.selectbox("transcoder (the fourth kind)", [None, *tcs], index=1 if tcs else 0,
                          format_func=lambda t: "none" if t is None else f"{t.name} (L{t.layer} MLP, "
                                                                         f"{t.d_sae:,} features)")
        c1, c2 = st.columns(2)
        units = c1.number_input("units per kind (as compare-units --units)", 1, 10_000, 100)
        seed = c2.number_input("seed (as --seed)", 0, 1 << 30, 0)
        return name, d, kind_table(s, name, d.layer, d.source, int(units), int(seed), tc.source if tc else None)

    data = read(load)
    if data is None:
        return
    name, d, table = data
    if d is None or not any(k.count(key) for k in table for key in ("token_lookup", "n2g_f1", "topic_npmi")):
        st.info("No comparison yet. Run, for an SAE of this model:\n\n"
                f"`python -m analysis compare-units --model {name} --layer L --sae SAE_DIR [--transcoder DIR] "
                f"--db {db_path()}`")
        return
    st.caption(f"Layer {d.layer}, {d.site}: for each kind a seeded random sample of units that fire at all; every "
               "number is read from the cache (the unit pages show the same explanations, graphs and topics).")
    st.markdown("  ·  ".join(f"**{LABELS.get(k.kind, k.kind)}**: {len(k.metrics)} sampled of {k.n_live:,} that fire "
                             f"(of {k.n_units:,})" for k in table))
    rows = []
    for key, title, note in METRICS:
        row = {"median of": title}
        for k in table:
            v = k.med(key)
            row[LABELS.get(k.kind, k.kind)] = "–" if v is None else f"{v:.3f}  (n={k.count(key)})"
        rows.append(row)
    st.dataframe(rows, hide_index=True)
    by_kind = {k.kind: k for k in table}
    for key, title, note in METRICS:
        if not any(k.count(key) for k in table):
            continue
        fig = go.Figure()
        for kind in KINDS:
            k = by_kind.get(kind)
            if k is None:
                continue
            pts = [m for m in k.metrics if getattr(m, key) is not None]
            fig.add_trace(go.Box(y=[getattr(m, key) for m in pts], name=LABELS[kind], boxpoints="all", jitter=0.4,
                                 pointpos=0, hovertext=[str(m.unit) for m in pts], boxmean=False))
        fig.update_layout(height=320, title=f"{title} ({note})", template="plotly_white", showlegend=False,
                          margin=dict(t=40, b=20))
        st.plotly_chart(fig, key=f"box_{key}")
    verdicts = []
    sae, neurons = by_kind.get("sae"), by_kind.get("neurons")
    for key, title, _ in METRICS[:4]:
        if sae and neurons and sae.med(key) is not None and neurons.med(key) is not None:
            others = {kind: k.med(key) for kind, k in by_kind.items() if kind != "sae" and k.med(key) is not None}
            best = all(sae.med(key) > v for v in others.values())
            verdicts.append(f"- **{title}**: SAE features {sae.med(key):.3f} vs " + ", ".join(
                f"{LABELS[kind]} {v:.3f}" for kind, v in others.items())
                + (" — features ahead of every other kind, as Cunningham et al. (2023) found." if best else
                   " — features are **not** ahead of every other kind here."))
    if verdicts:
        st.markdown("**Do features beat the other kinds?** (medians)\n" + "\n".join(verdicts))
    if sae and sae.metrics:
        top = sorted((m for m in sae.metrics if m.token_lookup is not None), key=lambda m: -m.token_lookup)[:8]
        st.markdown("best features by token-lookup score: " + ", ".join(
            f"{unit_link(name, m.unit, f'F{m.unit.index}')} {m.token_lookup:.2f}" for m in top))


render()
