"""Transcoder features as units (analysis/attribution/, analysis/weights.py) against independent computations.

A transcoder reads the MLP's normed input and writes what the MLP adds to the residual stream. The references read
and write those places with plain torch hooks on the HF modules named here (the pre-MLP norm's output, the MLP's
or Gemma's post-feedforward norm's output), encode and decode by hand in float64, and take the "pinned" model of
tests/unit/test_attribution.py (norm denominators and attention queries and keys of a first pass) for the
frozen model's exact ablations and finite differences."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from analysis.activations import edited_features
from analysis.attribution.check import check_by_ablation
from analysis.attribution.frozen import attribute, frozen, trace
from analysis.attribution.graph import connect
from analysis.attribution.units import Target, UnitAt
from analysis.models import load_model
from analysis.sae.model import SAE, finish
from analysis.types import MLP, UnitId
from analysis.weights import feature_weights
from tests.helpers import rel_err
from tests.sae_helpers import topk_ambiguous
from tests.unit.test_attribution import Pinned, _forward, _ids, _neuron, _site, _value

FAMILIES = ["llama", "gpt2", "gemma"]
K = 4


@pytest.fixture(scope="module")
def subjects(tiny_folders):
    return {k: load_model(str(tiny_folders[k])) for k in FAMILIES}


@pytest.fixture(scope="module")
def subjects64(tiny_folders):
    return {k: load_model(str(tiny_folders[k]), dtype=torch.float64) for k in FAMILIES}


def _transcoder(d: int, layer: int, seed: int, skip: bool = False, d_sae: int = 64) -> SAE:
    g = torch.Generator().manual_seed(seed)
    sae = SAE(W_enc=torch.randn(d, d_sae, generator=g) / d ** 0.5, b_enc=torch.randn(d_sae, generator=g) * 0.1,
              W_dec=torch.randn(d_sae, d, generator=g) * 0.3, b_dec=torch.randn(d, generator=g) * 0.1,
              architecture="topk", k=K, layer=layer, site="mlp_input", output_site="mlp_out",
              apply_b_dec_to_input=False, name="tiny-transcoder",
              W_skip=torch.randn(d, d, generator=g) * 0.1 if skip else None)
    return finish(sae)


def _norm_in(subject, layer):
    """The HF module whose output is the MLP's normed input."""
    name = {"gpt2": "ln_2", "llama": "post_attention_layernorm", "gemma3_text": "pre_feedforward_layernorm"}
    return getattr(subject.blocks()[layer], name[subject.info.architecture])


def _mlp_out(subject, layer):
    """The HF module whose output is what the MLP adds to the residual stream."""
    block = subject.blocks()[layer]
    return block.post_feedforward_layernorm if subject.info.architecture == "gemma3_text" else block.mlp


def _encode(tc: SAE, x: torch.Tensor, check: bool = True) -> torch.Tensor:
    """TopK features of ``[T, d]`` inputs by hand in float64 (``check``: no entry near a TopK decision)."""
    pre = x.double() @ tc.W_enc.double() + tc.b_enc.double()
    if check:
        assert not topk_ambiguous(pre.numpy(), K, eps=1e-5).any()  # the test's premise, fixed by its seeds
    top = torch.argsort(pre, dim=-1, descending=True)[..., :K]
    return torch.zeros_like(pre).scatter(-1, top, pre.gather(-1, top).clamp(min=0))


def _decode(tc: SAE, f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    out = f.double() @ tc.W_dec.double() + tc.b_dec.double()
    return out + x.double() @ tc.W_skip.double().T if tc.W_skip is not None else out


@contextmanager
def _hooked(module, fn):
    """``fn(output)`` replaces the module's output (``fn`` returns None: read only)."""
    def hook(_m, _a, out):
        new = fn(out)
        return out if new is None else new.to(out.dtype)
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def _mlp_input(subject, layer, ids) -> torch.Tensor:
    """``[T, d]``: the pre-MLP norm's output in a plain forward pass."""
    seen = {}
    with _hooked(_norm_in(subject, layer), lambda out: seen.__setitem__("x", out[0].detach().clone())):
        _forward(subject, ids)
    return seen["x"]


# ---- (a) the traced forward: the model's logits, the features of the MLP's normed input -----------------------

@pytest.mark.parametrize("kind,skip", [("llama", False), ("llama", True), ("gpt2", False), ("gemma", False)])
def test_traced_forward_keeps_the_logits_and_reads_the_mlp_input(subjects, kind, skip):
    subject = subjects[kind]
    ids = _ids(subject)
    tc = _transcoder(subject.d_model, 1, seed=11, skip=skip)
    with frozen(subject):
        traced = trace(subject, ids, (tc,))
    assert rel_err(traced.logits.detach(), _forward(subject, ids)) <= 1e-5
    acts = traced.acts[(tc.source, 1)]
    assert acts.requires_grad  # in the graph: edges into the features
    want = _encode(tc, _mlp_input(subject, 1, ids))
    assert rel_err(acts.detach(), want) <= 1e-5 and (want > 0).sum() >= len(ids)


# ---- (b) the replacement: the MLP's output := decode(encode(x), x), by hand -------------------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_replacement_with_zero_error_is_the_hand_computation(subjects64, kind):
    subject = subjects64[kind]
    ids = _ids(subject)
    tc = _transcoder(subject.d_model, 1, seed=13, skip=kind == "llama")
    read = {}
    with _hooked(_norm_in(subject, 1), lambda out: read.__setitem__("x", out[0]) or None), \
            _hooked(_mlp_out(subject, 1), lambda out: _decode(tc, _encode(tc, read["x"]), read["x"])[None]):
        want = _forward(subject, ids)
    with edited_features(subject, tc, lambda h, x: tc.reconstruct(x).to(h.dtype)):
        got = _forward(subject, ids)
    assert rel_err(want, _forward(subject, ids)) > 1e-2  # the replacement changes the output (the test can fail)
    assert rel_err(got, want) <= 1e-5


# ---- (c) attribution: activation × gradient through the decoder --------------------------------------------------

@pytest.mark.parametrize("kind,skip", [("llama", False), ("llama", True), ("gpt2", False), ("gemma", False)])
def test_last_layer_transcoder_attribution_is_the_exact_frozen_ablation(subjects64, kind, skip):
    """After the last MLP the path to the logits is linear in the frozen model: a feature's attribution is the exact
    change of the target when its decoder row times its activation leaves the MLP's output; the neurons keep the
    attributions they have without the transcoder (the MLP keeps its gradient)."""
    subject = subjects64[kind]
    ids, last = _ids(subject), subject.info.n_layers - 1
    p = len(ids) // 2
    logits = _forward(subject, ids)
    order = torch.argsort(logits[p], descending=True)
    target = Target(p, int(order[0]), int(order[4]))
    tc = _transcoder(subject.d_model, last, seed=17, skip=skip)
    att = attribute(subject, ids, target, (tc,))
    plain = attribute(subject, ids, target)
    for layer in range(subject.info.n_layers):
        torch.testing.assert_close(att.scores[(MLP, layer)], plain.scores[(MLP, layer)], rtol=1e-9, atol=1e-12)
    fs = att.scores[(tc.source, last)]
    assert not fs[:p].any() and not fs[p + 1:].any()
    f = _encode(tc, _mlp_input(subject, last, ids))
    torch.testing.assert_close(att.acts[(tc.source, last)].double(), f, rtol=1e-5, atol=1e-6)
    pinned = Pinned(subject)
    m0 = _value(pinned.run(ids)[p], target)
    active = torch.nonzero(f[p]).flatten().tolist()
    assert len(active) >= 2
    for i in active:
        with _site(subject, last, p, lambda h: h - f[p, i] * tc.W_dec[i].double()):  # the block adds the MLP's output
            removed = m0 - _value(pinned.run(ids)[p], target)
        assert float(fs[p, i]) == pytest.approx(removed, rel=1e-4, abs=1e-7), i
    assert max(abs(float(fs[p, i])) for i in active) > 1e-3


@pytest.mark.parametrize("kind", FAMILIES)
def test_transcoder_attribution_across_layers_is_a_finite_difference(subjects64, kind):
    subject = subjects64[kind]
    ids = _ids(subject)
    p, eps = len(ids) - 2, 1e-4
    target = Target(p, int(_forward(subject, ids)[p].argmax()))
    tc = _transcoder(subject.d_model, 0, seed=19)
    att = attribute(subject, ids, target, (tc,))
    pinned = Pinned(subject)
    pinned.run(ids)
    fs, fa = att.scores[(tc.source, 0)], att.acts[(tc.source, 0)]
    assert not fs[p + 1:].any()
    flat = fs[:p + 1].abs().reshape(-1)
    for j in torch.argsort(flat, descending=True)[:3].tolist():
        t, i = divmod(j, fs.shape[1])
        d = tc.W_dec[i].double()
        values = []
        for sign in (1.0, -1.0):
            with _site(subject, 0, t, lambda h: h + sign * eps * d):
                values.append(_value(pinned.run(ids)[target.position], target))
        want = float(fa[t, i]) * (values[0] - values[1]) / (2 * eps)
        assert float(fs[t, i]) == pytest.approx(want, rel=1e-4, abs=1e-6 * float(flat.max())), (t, i)
    assert float(flat.max()) > 1e-3


def test_graph_edges_into_and_out_of_a_transcoder_feature(subjects64):
    """An edge into a feature is the earlier unit's attribution to its encoding of the MLP's normed input; an edge
    out of it goes through its decoder row into the MLP's output (both finite differences of the pinned model)."""
    subject = subjects64["llama"]
    ids = _ids(subject)
    p, eps = len(ids) - 1, 1e-4
    target = Target(p, int(_forward(subject, ids)[p].argmax()))
    tc = _transcoder(subject.d_model, 1, seed=23)
    att = attribute(subject, ids, target, (tc,))
    s0, s2, fs = att.scores[(MLP, 0)], att.scores[(MLP, 2)], att.scores[(tc.source, 1)]
    t0, n0 = divmod(int(s0[:p + 1].abs().reshape(-1).argmax()), s0.shape[1])
    i, n2 = int(fs[p].abs().argmax()), int(s2[p].abs().argmax())
    nodes = [UnitAt(UnitId(MLP, 0, n0), t0, float(s0[t0, n0])), UnitAt(UnitId(tc.source, 1, i), p, float(fs[p, i])),
             UnitAt(UnitId(MLP, 2, n2), p, float(s2[p, n2]))]
    graph = connect(subject, ids, att, nodes, (tc,), keep=1.0)
    edge = {(e.source, e.target): e.weight for e in graph.edges}
    pinned = Pinned(subject)
    pinned.run(ids)
    mlp1 = subject.mlp(1)

    def feature(sign) -> float:  # the feature's activation at p with neuron (0, n0) at t0 moved by sign · eps
        seen = {}
        handle = mlp1.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0][0].detach().clone()))
        try:
            with _neuron(subject, 0, t0, n0, lambda v: v + sign * eps):
                pinned.run(ids)
        finally:
            handle.remove()
        return float(_encode(tc, seen["x"], check=False)[p, i])

    def neuron(sign) -> float:  # neuron (2, n2) at p with the feature's decoder row moved by sign · eps
        seen = {}
        with _site(subject, 1, p, lambda h: h + sign * eps * tc.W_dec[i].double()), \
                _neuron(subject, 2, p, n2, lambda v: seen.setdefault("v", float(v)) and v):
            pinned.run(ids)
        return seen["v"]

    into = float(att.acts[(MLP, 0)][t0, n0]) * (feature(1.0) - feature(-1.0)) / (2 * eps)
    out = float(att.acts[(tc.source, 1)][p, i]) * (neuron(1.0) - neuron(-1.0)) / (2 * eps)
    assert abs(into) > 1e-5 and edge[(0, 1)] == pytest.approx(into, rel=1e-4)
    assert abs(out) > 1e-5 and edge[(1, 2)] == pytest.approx(out, rel=1e-4)
    assert edge[(1, 3)] == nodes[1].value  # to the target: its attribution


# ---- (d) check by ablation: the decoder row times the activation out of the MLP's output ------------------------

@pytest.mark.parametrize("kind", FAMILIES)
def test_check_by_ablation_of_transcoder_features_is_the_hand_edit(subjects, kind):
    subject = subjects[kind]
    ids = _ids(subject)
    T = len(ids)
    tc = _transcoder(subject.d_model, 1, seed=29)
    clean = _forward(subject, ids)
    target = Target(T - 1, int(clean[-1].argmax()), int(clean[-1].argmin()))
    f = _encode(tc, _mlp_input(subject, 1, ids))
    picks = [(t, int(f[t].argmax())) for t in (T - 4, T - 2, T - 1)] + [(T - 2, int(f[T - 2].argsort()[-2]))]
    units = [UnitAt(UnitId(tc.source, 1, i), t, 0.5 * n) for n, (t, i) in enumerate(picks)]
    units.append(UnitAt(UnitId(MLP, 1, 3), T - 2, 0.1))  # a neuron of the same layer beside them
    got = check_by_ablation(subject, ids, target, units, (tc,))
    assert [c.unit for c in got] == units
    m0 = _value(clean[-1], target)
    for c, (t, i) in zip(got, picks):
        def minus(out, t=t, i=i):
            out = out.clone()
            out[0, t] = (out[0, t].double() - f[t, i] * tc.W_dec[i].double()).to(out.dtype)
            return out
        with _hooked(_mlp_out(subject, 1), minus):
            m = _value(_forward(subject, ids)[-1], target)
        assert c.real == pytest.approx(m - m0, abs=1e-5 * (max(1.0, abs(m)) + max(1.0, abs(m0)))), c.unit
    assert max(abs(c.real) for c in got[:-1]) > 1e-2  # the ablations move the target (the test can fail)
    with _neuron(subject, 1, T - 2, 3, lambda a: 0.0 * a):
        m = _value(_forward(subject, ids)[-1], target)
    assert got[-1].real == pytest.approx(m - m0, abs=1e-5 * (max(1.0, abs(m)) + max(1.0, abs(m0))))


# ---- weights: the encoder reads through the pre-MLP norm's gain, the decoder writes the residual stream ---------

@pytest.mark.parametrize("kind", FAMILIES)
def test_transcoder_feature_weights_match_the_formulas(tiny_folders, kind):
    subject = load_model(str(tiny_folders[kind]))
    g = torch.Generator().manual_seed(37)
    with torch.no_grad():  # the tiny models' norm gains are all 1: other gains, so that leaving them out shows
        for module in subject.model.modules():
            if "Norm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=g) + 0.5)
    sd = {k: v.detach().double().numpy() for k, v in subject.model.state_dict().items()}
    layer, index, k = 2, 5, 6
    tc = _transcoder(subject.d_model, layer, seed=31)
    if kind == "gpt2":
        emb, g_final = sd["transformer.wte.weight"], sd["transformer.ln_f.weight"]
        unemb = sd.get("lm_head.weight", emb)
        gain = sd[f"transformer.h.{layer}.ln_2.weight"]
        w_out = lambda l: sd[f"transformer.h.{l}.mlp.c_proj.weight"]  # noqa: E731  [d_mlp, d]
    else:
        emb = sd["model.embed_tokens.weight"]
        unemb = sd.get("lm_head.weight", emb)
        plus = 1.0 if kind == "gemma" else 0.0
        g_final = sd["model.norm.weight"] + plus
        norm = "pre_feedforward_layernorm" if kind == "gemma" else "post_attention_layernorm"
        gain = sd[f"model.layers.{layer}.{norm}.weight"] + plus
        w_out = lambda l: sd[f"model.layers.{l}.mlp.down_proj.weight"].T  # noqa: E731
    enc = tc.W_enc.double().numpy()[:, index] * gain
    dec = tc.W_dec.double().numpy()[index]
    tok_in, tok_out = emb @ enc, unemb @ (dec * g_final)
    rel = feature_weights(subject, tc, index, k=k)
    for links, scores, sign in [(rel.input_tokens_pos, tok_in, 1), (rel.input_tokens_neg, tok_in, -1),
                                (rel.output_tokens_pos, tok_out, 1), (rel.output_tokens_neg, tok_out, -1)]:
        np.testing.assert_allclose([link.weight for link in links], sign * np.sort(sign * scores)[::-1][:k],
                                   rtol=1e-4, atol=1e-5)
        for link in links:
            assert link.weight == pytest.approx(scores[link.token_id], rel=1e-4, abs=1e-5)
    unit = lambda m: m / np.linalg.norm(m, axis=-1, keepdims=True)  # noqa: E731
    cos = {(l, n): v for l in range(layer) for n, v in enumerate(unit(w_out(l)) @ unit(enc))}  # before its layer
    assert [link.layer for link in rel.neurons] and all(link.layer < layer for link in rel.neurons)
    np.testing.assert_allclose([link.weight for link in rel.neurons], sorted(cos.values(), reverse=True)[:k],
                               rtol=1e-4, atol=1e-5)
    for link in rel.neurons:
        assert link.weight == pytest.approx(cos[(link.layer, link.neuron)], rel=1e-4, abs=1e-5)
    assert "reads mlp_input, writes mlp_out" in rel.note
