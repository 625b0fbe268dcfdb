"""Live text: type or paste text, see the chosen unit (neuron or dictionary feature) fire on it, which units of
the same kind and layer fire most, and what ablating the unit does to the next-token predictions."""

from __future__ import annotations

import streamlit as st
import torch

from analysis.activations import neuron_reader, sae_reader, unit_activations
from analysis.tokens import joined_runs
from analysis.types import MLP, TokenActivations, UnitId
from viewer.components.causal import ablation_view
from viewer.components.heatmap import md_token, records_html
from viewer.components.picker import unit_link, unit_name
from viewer.resources import MAX_LIVE_TOKENS, dictionary, hooks_lock, pick_unit_stats, read, show_error, subject

DEFAULT_TEXT = "The Eiffel Tower is in Paris, the capital of France. In 1889 it was the tallest structure in the world."


def live_activations(model_name: str, text: str, layer: int, source: str = MLP, sae_path: str = ""):
    """(token strings, their readable runs, activations [T, units], token limit if the text was cut else None)
    for ``text``: the
    layer's neurons, or the features of dictionary ``source``."""
    subj = subject(model_name)
    reader = neuron_reader(layer) if source == MLP else sae_reader(dictionary(source, sae_path))
    limit = min(MAX_LIVE_TOKENS, (subj.context_length or MAX_LIVE_TOKENS) - len(subj.bos_prefix))
    ids = subj.tokenize(text)
    cut = limit if len(ids) > limit else None
    ids = ids[:limit]
    enc = subj.encode([ids])
    with hooks_lock(model_name):
        acts = unit_activations(subj, enc.input_ids, enc.attention_mask, [reader])[reader.key][0, enc.n_prefix:]
    tokens = subj.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)
    return tokens, joined_runs([subj.vocab_bytes[i] for i in ids]), acts, cut


def render() -> None:
    data = read(pick_unit_stats)
    if data is None:
        return
    picked, stats, sae_path = data
    vmax_cached = stats.max if stats else None
    st.title("Live text")
    qp = st.query_params
    if "live_text" not in st.session_state:  # first render of the session: from the URL
        st.session_state["live_text"] = qp.get("text", DEFAULT_TEXT)
    text = st.text_area("text", key="live_text", height=140,
                        help=f"at most {MAX_LIVE_TOKENS} tokens (or the model's context) are used")
    if len(text) <= 2000:
        qp["text"] = text
    elif "text" in qp:
        del qp["text"]  # long texts stay out of the URL
    if not text.strip():
        st.info("type or paste some text above")
        return
    try:
        with st.spinner("running the model…"):
            tokens, runs, acts, cut = live_activations(picked.model.name, text, picked.layer, picked.source, sae_path)
    except Exception as exc:
        show_error(exc)
        return
    if cut:
        st.warning(f"the text is longer than {cut} tokens (the live limit, or the model's context): only the first {cut} are used")
    col = acts[:, picked.neuron].tolist()
    vmax = max([vmax_cached or 0.0, max(col), 1e-9])
    scale = "the unit's corpus max" if vmax_cached and vmax_cached >= max(col) else "the max on this text"
    st.subheader(f"{unit_name(picked.unit)} on this text (max {max(col):.3g}; colour scale: {scale})")
    st.html(records_html([TokenActivations(tokens, col, runs=runs)], vmax))
    noun = "Neurons" if picked.source == MLP else "Features"
    st.subheader(f"{noun} of layer {picked.layer} that fire most on this text")
    top = torch.topk(acts.max(0).values, min(12, acts.shape[1]))
    readable = {i: t for a, b, t in runs for i in range(a, b)}  # a split character's token shows it whole
    lines = []
    for v, n in zip(top.values.tolist(), top.indices.tolist()):
        where = int(acts[:, n].argmax())
        unit = UnitId(picked.source, picked.layer, n)
        lines.append(f"- {unit_link(picked.model.name, unit)} max {v:.3g} at token {where} "
                     f"{md_token(readable.get(where, tokens[where]))}")
    st.markdown("\n".join(lines))
    ablation_section(picked, text, len(tokens), stats, sae_path, runs)


def ablation_section(picked, text: str, n_tokens: int, stats, sae_path: str, runs: tuple) -> None:
    """The unit ablated on this text: which next-token predictions it supports."""
    from analysis.causal import MODES, ablate_unit

    st.subheader(f"What {unit_name(picked.unit)} does to the predictions (ablation)")
    qp = st.query_params
    c1, c2 = st.columns([2, 1])
    mode = c1.radio("set the unit to", MODES, horizontal=True, key="abl_mode",
                    index=MODES.index(qp.get("ablate")) if qp.get("ablate") in MODES else 0,
                    format_func={"zero": "0", "mean": "its harvest mean", "value": "a value"}.get)
    value = c2.number_input("value", value=0.0, key="abl_value", disabled=mode != "value")
    if not st.toggle("ablate", value="ablate" in qp, key="abl_on",
                     help="one more forward pass from the unit's layer on (about the cost of the live pass)"):
        qp.pop("ablate", None)
        return
    qp["ablate"] = mode
    try:
        subj = subject(picked.model.name)
        sae = dictionary(picked.source, sae_path) if picked.source != MLP else None
        ids = subj.tokenize(text)[:n_tokens]  # as the live pass cut it
        with st.spinner("ablating…"), hooks_lock(picked.model.name):
            a = ablate_unit(subj, ids, picked.unit, mode, stats, value, sae)
    except Exception as exc:
        show_error(exc)
        return
    ablation_view(a, runs, subj.tokenizer)


render()
