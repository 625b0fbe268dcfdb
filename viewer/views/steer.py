"""Steering: a prompt's continuation twice, side by side, plain and with the picked unit clamped or scaled; the
URL carries the unit, the prompt and every setting, so a result can be shared."""

from __future__ import annotations

import streamlit as st

from analysis.types import MLP
from viewer.components.causal import steering_view
from viewer.components.picker import unit_name
from viewer.resources import dictionary, hooks_lock, pick_unit_stats, read, show_error, subject

DEFAULT_PROMPT = "The capital of France is"


def _number(qp, key: str, default: float) -> float:
    try:
        return float(qp.get(key, default))
    except ValueError:
        return default


def render() -> None:
    data = read(pick_unit_stats)
    if data is None:
        return
    picked, stats, sae_path = data
    st.title("Steering")
    if stats is None:
        st.warning(f"{unit_name(picked.unit)} is not harvested in this cache: its max sets the clamp's scale")
        return
    qp = st.query_params
    prompt = st.text_input("prompt", value=qp.get("prompt", DEFAULT_PROMPT), key="steer_prompt")
    c1, c2, c3, c4, c5 = st.columns(5)
    how = c1.radio("edit", ["clamp", "scale"], horizontal=True, key="steer_how",
                   index=1 if qp.get("how") == "scale" else 0,
                   help="clamp: set a neuron to k × its max (a feature: add k × its max along its decoder direction); "
                        "scale: multiply the unit's activation by k (1 changes nothing)")
    k = c2.number_input("k", value=_number(qp, "k", 5.0), key="steer_k", format="%.3g")
    temperature = c3.number_input("temperature", 0.0, 5.0, _number(qp, "t", 0.0), key="steer_t",
                                  help="0: greedy")
    seed = int(c4.number_input("seed", 0, 1 << 30, int(_number(qp, "seed", 0)), key="steer_seed"))
    new = int(c5.number_input("new tokens", 1, 256, int(_number(qp, "new", 32)), key="steer_new"))
    qp.update(prompt=prompt, how=how, k=f"{k:g}", t=f"{temperature:g}", seed=str(seed), new=str(new))
    st.caption(f"{unit_name(picked.unit)}: max {stats.max:.3g} over its harvest; the edit applies at every position "
               "(prompt and generated tokens). Share this page's URL to share the result.")
    if not st.toggle("generate", value=qp.get("go") == "1", key="steer_go"):
        qp.pop("go", None)
        return
    qp["go"] = "1"
    from analysis.causal import steer_unit

    try:
        subj = subject(picked.model.name)
        sae = dictionary(picked.source, sae_path) if picked.source != MLP else None
        with st.spinner("generating twice…"), hooks_lock(picked.model.name):
            result = steer_unit(subj, subj.tokenize(prompt), picked.unit, stats, k if how == "clamp" else None,
                                k if how == "scale" else None, sae, new, temperature, seed)
    except Exception as exc:
        show_error(exc)
        return
    steering_view(result, subj.tokenizer)


render()
