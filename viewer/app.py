"""The viewer (minimal page for now): what is cached, and one neuron's stats, histogram and top records.

Run: ``streamlit run viewer/app.py -- --db PATH`` (else $NEURON_VIEWER_DB, else the demo cache).
The view is in the URL: ``?model=<name>&layer=<L>&neuron=<N>``.
"""

from __future__ import annotations

import argparse
import html
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plotly.graph_objects as go  # noqa: E402
import streamlit as st  # noqa: E402

from analysis.config import default_db  # noqa: E402
from analysis.types import UserError  # noqa: E402
from cache.store import open_store  # noqa: E402


def db_path() -> Path:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.db or os.environ.get("NEURON_VIEWER_DB") or default_db())


def heatmap_html(tokens: list[str], acts: list[float], vmax: float) -> str:
    spans = []
    for tok, a in zip(tokens, acts):
        alpha = max(0.0, min(1.0, a / vmax)) if vmax > 0 else 0.0
        neg = max(0.0, min(1.0, -a / vmax)) if vmax > 0 else 0.0
        color = f"rgba(255,120,0,{alpha:.2f})" if a >= 0 else f"rgba(60,120,255,{neg:.2f})"
        text = html.escape(tok).replace("\n", "⏎<br>")
        spans.append(f'<span title="{html.escape(repr(tok))}: {a:.3f}" style="background:{color};'
                     f'white-space:pre-wrap">{text}</span>')
    return '<div style="font-family:monospace;line-height:1.7;margin-bottom:6px">' + "".join(spans) + "</div>"


def main() -> None:
    st.set_page_config(page_title="Neuron viewer", layout="wide")
    path = db_path()
    try:
        with open_store(path, read_only=True) as store:
            models = store.models()
            if not models:
                st.info(f"{path} holds no harvest yet: run `make demo` or `python -m analysis harvest --db {path}`")
                return
            qp = st.query_params
            names = sorted({m.name for m in models})
            model_name = st.sidebar.selectbox("model", names, index=names.index(qp["model"]) if qp.get("model") in names else 0)
            model = store.model(model_name)
            layer = st.sidebar.number_input("layer", 0, model.n_layers - 1, int(qp.get("layer", 0)) if str(qp.get("layer", "0")).isdigit() else 0)
            neuron = st.sidebar.number_input("neuron", 0, model.d_mlp - 1, min(int(qp.get("neuron", 0)) if str(qp.get("neuron", "0")).isdigit() else 0, model.d_mlp - 1))
            st.query_params.update({"model": model_name, "layer": str(layer), "neuron": str(neuron)})
            run = store.find_run(model_name, int(layer))
            st.title(f"{model_name} · layer {layer} · neuron {neuron}")
            if run is None:
                st.warning(f"layer {layer} is not harvested: python -m analysis harvest --model {model_name} --layers {layer} --db {path}")
                return
            rec = store.neuron_record(run, int(layer), int(neuron))
    except UserError as exc:
        st.error(str(exc))
        return
    s = rec.stats
    cols = st.columns(6)
    for col, (label, val) in zip(cols, [("max", s.max), ("mean", s.mean), ("std", s.std), ("skew", s.skewness),
                                        ("kurtosis", s.kurtosis), ("active", s.frac_active)]):
        col.metric(label, f"{val:.3g}")
    nz = [(e, c) for e, c in zip(s.hist_edges, s.hist_counts) if c]
    fig = go.Figure(go.Bar(x=[(a + b) / 2 for (a, b), _ in nz], y=[c for _, c in nz],
                           width=[abs(b - a) if abs(b - a) < 1e4 else 0 for (a, b), _ in nz]))
    fig.update_layout(height=250, margin=dict(l=0, r=0, t=20, b=0), yaxis_type="log", xaxis_title="activation")
    st.plotly_chart(fig)
    vmax = max(s.max, 1e-6)
    st.subheader("Top-activating windows")
    st.markdown("".join(heatmap_html(r.tokens, r.activations, vmax) for r in rec.most_positive_activation_records),
                unsafe_allow_html=True)
    st.caption(f"run {rec.run_id} · {rec.corpus_id} · hook {html.escape(rec.hook_point)}")


main()
