"""Model / source / layer / unit picker, synced with the URL (``?model=&layer=&neuron=[&source=]``, prefixed for
Compare). ``source`` is left out of URLs for MLP neurons, so links made before units had sources stay valid."""

from __future__ import annotations

import random
from dataclasses import dataclass

import streamlit as st

from analysis.jobs.reads import match_source
from analysis.types import MLP, ModelInfo, UnitId, UserError


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


def source_label(source: str, dictionaries: dict | None = None) -> str:
    """'neurons' for the MLP neurons, else the dictionary's name and width."""
    if source == MLP:
        return "MLP neurons"
    d = (dictionaries or {}).get(source)
    if d is None:
        return source
    where = f"L{d.layer} MLP in → out" if d.kind == "transcoder" else f"L{d.layer} {d.site}"
    return f"{d.name} ({d.kind}, {d.d_sae:,} features, {where})"


def url_source(text: str, model: ModelInfo, have: list[str], dictionaries: dict) -> tuple[str, str | None]:
    """(the source a URL's ``source`` names: a harvested id as it is, else the full id of the dictionary of
    ``model`` it names by name, ``sae:<name>`` or folder; why it names none, or None)."""
    if text in have:
        return text, None
    try:
        return match_source([d for d in dictionaries.values() if d.model_id == model.model_id], text,
                            f" of {model.name}"), None
    except UserError as exc:
        return text, str(exc)


def neuron_picker(models: list[ModelInfo], prefix: str = "", container=None, buttons: bool = True,
                  sources: dict[str, list[str]] | None = None, dictionaries: dict | None = None) -> Picked:
    """``sources``: model id -> the unit sources harvested for it (default: MLP neurons only); ``dictionaries``:
    source -> DictionaryInfo (a dictionary's features live at its one layer)."""
    box = container if container is not None else st.sidebar
    dictionaries = dictionaries or {}
    qp = st.query_params
    names = sorted({m.name for m in models})
    k_m, k_l, k_n, k_s = f"{prefix}model", f"{prefix}layer", f"{prefix}neuron", f"{prefix}source"

    def bounds(model: ModelInfo, source: str) -> tuple[int | None, int, str]:
        """(the source's only layer or None, units per layer, unit noun)."""
        d = dictionaries.get(source)
        return (None, model.d_mlp, "neuron") if d is None else (d.layer, d.d_sae, "feature")

    problem = None
    if k_m not in st.session_state:  # first render of this session: take the view from the URL
        want = qp.get(k_m)
        if want is not None and want not in names:
            problem = f"model {want!r} is not in this cache (cached: {', '.join(names)}); showing {names[0]}"
        st.session_state[k_m] = want if want in names else names[0]
        model = next(m for m in models if m.name == st.session_state[k_m])
        have = (sources or {}).get(model.model_id, [MLP])
        want_source, why = url_source(qp.get(k_s, MLP), model, have, dictionaries)
        if want_source not in have:
            problem = why or f"source {want_source!r} is not in this cache for {model.name} (cached: {', '.join(have)})"
        source = want_source if want_source in have else have[0]
        fixed, n, noun = bounds(model, source)
        layer, neuron = _int(qp.get(k_l), fixed or 0), _int(qp.get(k_n), 0)
        if layer is None or not 0 <= layer < model.n_layers or (fixed is not None and layer != fixed):
            problem = (f"layer {qp.get(k_l)!r} does not exist: {model.name} has layers 0..{model.n_layers - 1}"
                       if fixed is None else f"{source} reads layer {fixed} only, not {qp.get(k_l)!r}")
            layer = fixed or 0
        if neuron is None or not 0 <= neuron < n:
            problem = f"{noun} {qp.get(k_n)!r} does not exist: {source_label(source, dictionaries)} has {noun}s 0..{n - 1}"
            neuron = 0
        st.session_state[k_l], st.session_state[k_n], st.session_state[k_s] = layer, neuron, source
    box.selectbox("model", names, key=k_m)
    model = next(m for m in models if m.name == st.session_state[k_m])
    have = (sources or {}).get(model.model_id, [MLP])
    if st.session_state.get(k_s) not in have:
        st.session_state[k_s] = have[0]
    if len(have) > 1:
        box.selectbox("units", have, key=k_s, format_func=lambda s: source_label(s, dictionaries),
                      help="MLP neurons, or the features of a dictionary (an SAE, or a baseline set of directions)")
    source = st.session_state[k_s]
    fixed, n, noun = bounds(model, source)
    if fixed is not None:
        st.session_state[k_l] = fixed
    st.session_state[k_l] = min(max(int(st.session_state[k_l]), 0), model.n_layers - 1)
    st.session_state[k_n] = min(max(int(st.session_state[k_n]), 0), n - 1)
    box.number_input(f"layer (0–{model.n_layers - 1})", 0, model.n_layers - 1, key=k_l, disabled=fixed is not None,
                     help=None if fixed is None else "a dictionary reads one layer")
    box.number_input(f"{noun} (0–{n - 1})", 0, n - 1, key=k_n)
    if buttons:
        def step(delta: int) -> None:
            st.session_state[k_n] = (int(st.session_state[k_n]) + delta) % n

        def pick_random() -> None:
            if fixed is None:
                st.session_state[k_l] = random.randrange(model.n_layers)
            st.session_state[k_n] = random.randrange(n)

        c1, c2, c3 = box.columns(3)
        c1.button("◀", key=f"{prefix}prev", on_click=step, args=(-1,), help=f"previous {noun}", use_container_width=True)
        c2.button("▶", key=f"{prefix}next", on_click=step, args=(1,), help=f"next {noun}", use_container_width=True)
        c3.button(":material/casino:", key=f"{prefix}rand", on_click=pick_random, help=f"random {noun}",
                  use_container_width=True)
    picked = Picked(model, int(st.session_state[k_l]), int(st.session_state[k_n]), problem, source)
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


def list_url(name: str) -> str:
    """Relative URL of a list's page."""
    from urllib.parse import urlencode

    return "./lists?" + urlencode({"list": name})


def unit_link(model: str, unit: UnitId, label: str | None = None, tab: str | None = None) -> str:
    """Markdown link to a unit's page (labelled ``unit_name`` by default; opening ``tab``)."""
    return f"[{label or unit_name(unit)}]({unit_url(model, unit, tab)})"


def unit_name(unit: UnitId) -> str:
    """A unit's short name in lists: 'L12/N345' for a neuron (as before units had sources), 'L12/F345' for a
    dictionary feature."""
    return str(unit) if unit.source == MLP else f"L{unit.layer}/F{unit.index}"


def unit_label(unit: UnitId) -> str:
    """'N345' for a neuron, 'F345 (<dictionary name>)' for a dictionary feature."""
    if unit.source == MLP:
        return f"N{unit.index}"
    name = unit.source.removeprefix("sae:").rsplit("@", 1)[0]
    return f"F{unit.index} ({name})"


def unit_title(model_name: str, unit: UnitId) -> str:
    """'model · L12 · N345' (see ``unit_label``)."""
    return f"{model_name} · L{unit.layer} · {unit_label(unit)}"
