"""Model / layer / neuron picker, synced with the URL (``?model=&layer=&neuron=``, prefixed for Compare)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import streamlit as st

from analysis.types import ModelInfo


@dataclass(frozen=True)
class Picked:
    model: ModelInfo
    layer: int
    neuron: int
    problem: str | None
    """Why the URL's choice was not honoured (unknown model, layer or neuron), else None."""


def _int(value, default: int) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def neuron_picker(models: list[ModelInfo], prefix: str = "", container=None, buttons: bool = True) -> Picked:
    box = container if container is not None else st.sidebar
    qp = st.query_params
    names = sorted({m.name for m in models})
    k_m, k_l, k_n = f"{prefix}model", f"{prefix}layer", f"{prefix}neuron"
    problem = None
    if k_m not in st.session_state:  # first render of this session: take the view from the URL
        want = qp.get(k_m)
        if want is not None and want not in names:
            problem = f"model {want!r} is not in this cache (cached: {', '.join(names)}); showing {names[0]}"
        st.session_state[k_m] = want if want in names else names[0]
        model = next(m for m in models if m.name == st.session_state[k_m])
        layer, neuron = _int(qp.get(k_l), 0), _int(qp.get(k_n), 0)
        if layer is None or not 0 <= layer < model.n_layers:
            problem = f"layer {qp.get(k_l)!r} does not exist: {model.name} has layers 0..{model.n_layers - 1}"
            layer = 0
        if neuron is None or not 0 <= neuron < model.d_mlp:
            problem = f"neuron {qp.get(k_n)!r} does not exist: {model.name} has neurons 0..{model.d_mlp - 1} per layer"
            neuron = 0
        st.session_state[k_l], st.session_state[k_n] = layer, neuron
    box.selectbox("model", names, key=k_m)
    model = next(m for m in models if m.name == st.session_state[k_m])
    st.session_state[k_l] = min(max(int(st.session_state[k_l]), 0), model.n_layers - 1)
    st.session_state[k_n] = min(max(int(st.session_state[k_n]), 0), model.d_mlp - 1)
    box.number_input(f"layer (0–{model.n_layers - 1})", 0, model.n_layers - 1, key=k_l)
    box.number_input(f"neuron (0–{model.d_mlp - 1})", 0, model.d_mlp - 1, key=k_n)
    if buttons:
        def step(delta: int) -> None:
            st.session_state[k_n] = (int(st.session_state[k_n]) + delta) % model.d_mlp

        def pick_random() -> None:
            st.session_state[k_l] = random.randrange(model.n_layers)
            st.session_state[k_n] = random.randrange(model.d_mlp)

        c1, c2, c3 = box.columns(3)
        c1.button("◀", key=f"{prefix}prev", on_click=step, args=(-1,), help="previous neuron", use_container_width=True)
        c2.button("▶", key=f"{prefix}next", on_click=step, args=(1,), help="next neuron", use_container_width=True)
        c3.button(":material/casino:", key=f"{prefix}rand", on_click=pick_random, help="random neuron",
                  use_container_width=True)
    picked = Picked(model, int(st.session_state[k_l]), int(st.session_state[k_n]), problem)
    qp[k_m], qp[k_l], qp[k_n] = model.name, str(picked.layer), str(picked.neuron)
    return picked


def neuron_url(model: str, layer: int, neuron: int, tab: str | None = None) -> str:
    """Relative URL of a neuron's page (works behind any host and port)."""
    from urllib.parse import urlencode

    return "./?" + urlencode({"model": model, "layer": layer, "neuron": neuron, **({"tab": tab} if tab else {})})


def neuron_link(model: str, layer: int, neuron: int, label: str | None = None) -> str:
    """Markdown link to a neuron's page."""
    return f"[{label or f'L{layer}/N{neuron}'}]({neuron_url(model, layer, neuron)})"
