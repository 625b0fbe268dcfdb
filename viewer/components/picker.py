"""Model / source / layer / unit picker, synced with the URL (``?model=&layer=&neuron=[&source=]``, prefixed for
Compare). ``source`` is left out of URLs for MLP neurons, so links made before units had sources stay valid."""

from __future__ import annotations

import random
from dataclasses import dataclass

import streamlit as st

from analysis.types import MLP, ModelInfo, UnitId


@dataclass(frozen=True)
class Picked:
    model: ModelInfo
    layer: int
    neuron: int
    """The unit's index (a neuron for source 'mlp')."""
    problem: str | None
    """Why the URL's choice was not honoured (unknown model, source, layer or neuron), else None."""
    source: str = MLP

    @property
    def unit(self) -> UnitId:
        return UnitId(self.source, self.layer, self.neuron)


def _int(value, default: int) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def neuron_picker(models: list[ModelInfo], prefix: str = "", container=None, buttons: bool = True,
                  sources: dict[str, list[str]] | None = None) -> Picked:
    """``sources``: model id -> the unit sources harvested for it (default: MLP neurons only)."""
    box = container if container is not None else st.sidebar
    qp = st.query_params
    names = sorted({m.name for m in models})
    k_m, k_l, k_n, k_s = f"{prefix}model", f"{prefix}layer", f"{prefix}neuron", f"{prefix}source"
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
        have = (sources or {}).get(model.model_id, [MLP])
        want_source = qp.get(k_s, MLP)
        if want_source not in have:
            problem = f"source {want_source!r} is not in this cache for {model.name} (cached: {', '.join(have)})"
        st.session_state[k_s] = want_source if want_source in have else have[0]
    box.selectbox("model", names, key=k_m)
    model = next(m for m in models if m.name == st.session_state[k_m])
    have = (sources or {}).get(model.model_id, [MLP])
    if st.session_state.get(k_s) not in have:
        st.session_state[k_s] = have[0]
    if len(have) > 1:
        box.selectbox("source", have, key=k_s, help="mlp: MLP neurons; others: dictionary (SAE) features")
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
    picked = Picked(model, int(st.session_state[k_l]), int(st.session_state[k_n]), problem, st.session_state[k_s])
    qp[k_m], qp[k_l], qp[k_n] = model.name, str(picked.layer), str(picked.neuron)
    if picked.source != MLP:
        qp[k_s] = picked.source
    elif k_s in qp:
        del qp[k_s]
    return picked


def unit_url(model: str, unit: UnitId, tab: str | None = None) -> str:
    """Relative URL of a unit's page (works behind any host and port)."""
    from urllib.parse import urlencode

    return "./?" + urlencode({"model": model, "layer": unit.layer, "neuron": unit.index,
                              **({"source": unit.source} if unit.source != MLP else {}), **({"tab": tab} if tab else {})})


def unit_link(model: str, unit: UnitId, label: str | None = None) -> str:
    """Markdown link to a unit's page."""
    return f"[{label or str(unit)}]({unit_url(model, unit)})"


def unit_label(unit: UnitId) -> str:
    """'N345' for a neuron, '<source> #345' for a dictionary feature."""
    return f"N{unit.index}" if unit.source == MLP else f"{unit.source} #{unit.index}"


def unit_title(model_name: str, unit: UnitId) -> str:
    """'model · L12 · N345' (see ``unit_label``)."""
    return f"{model_name} · L{unit.layer} · {unit_label(unit)}"
