"""Attribution through the frozen model (analysis/attribution/) against independent computations.

The reference is a "pinned" float64 model written here: a first pass records every norm's denominator and every
attention module's queries and keys; later passes compute each norm's output by hand with the recorded
denominator and hand the recorded queries and keys to the attention function. Its exact ablations and its finite
differences are what the frozen model's ``activation × gradient`` must equal."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch

from analysis.attribution.check import check_by_ablation, spearman
from analysis.attribution.frozen import attribute, frozen
from analysis.attribution.graph import connect
from analysis.attribution.units import Target, UnitAt, layer_position_map, relative, top_units
from analysis.models import load_model
from analysis.types import MLP, UnitId, UserError
from tests.helpers import KINDS, assert_same_top, random_topk_sae

TEXT = "Paris is the capital of France."


@pytest.fixture(scope="module")
def subjects(tiny_folders):
    return {k: load_model(str(tiny_folders[k])) for k in KINDS}


@pytest.fixture(scope="module")
def subjects64(tiny_folders):
    return {k: load_model(str(tiny_folders[k]), dtype=torch.float64) for k in KINDS}


def _ids(subject, text=TEXT):
    return subject.bos_prefix + subject.tokenize(text)


def _is_norm(m) -> bool:
    return isinstance(m, torch.nn.LayerNorm) or "RMSNorm" in type(m).__name__


def _forward(subject, ids) -> torch.Tensor:
    """``[T, vocab]`` logits of the whole HF model."""
    with torch.no_grad():
        return subject.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def _value(row, target: Target) -> float:
    return float(row[target.token] - (row[target.contrast] if target.contrast is not None else 0.0))


class Pinned:
    """The model with the first pass's norm denominators and attention queries and keys (``run`` clean first)."""

    def __init__(self, subject):
        self.subject, self.scale, self.qk, self.recording = subject, {}, {}, True

    def _norm_hook(self, module, args, output):
        x = args[0].double()
        centred = x - x.mean(-1, keepdim=True) if isinstance(module, torch.nn.LayerNorm) else x
        eps = module.eps if hasattr(module, "eps") else module.variance_epsilon
        if self.recording:
            self.scale[module] = (centred.pow(2).mean(-1, keepdim=True) + eps).sqrt()
        w = module.weight.double()
        gain = 1.0 + w if type(module).__name__.startswith("Gemma") else w
        out = gain * centred / self.scale[module]
        if getattr(module, "bias", None) is not None:
            out = out + module.bias.double()
        return out.to(output.dtype)

    @contextmanager
    def _active(self):
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        impl = self.subject.model.config._attn_implementation
        assert impl != "eager"
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        saved, original = dict(local), ALL_ATTENTION_FUNCTIONS[impl]

        def attention(module, query, key, value, *args, **kwargs):
            if self.recording:
                self.qk[module] = (query, key)
            else:
                query, key = self.qk[module]
            return original(module, query, key, value, *args, **kwargs)

        local[impl] = attention
        handles = [m.register_forward_hook(self._norm_hook) for m in self.subject.model.modules() if _is_norm(m)]
        try:
            yield
        finally:
            for h in handles:
                h.remove()
            local.clear()
            local.update(saved)

    def run(self, ids) -> torch.Tensor:
        with self._active():
            out = _forward(self.subject, ids)
        self.recording = False
        return out


@contextmanager
def _hook(module, fn, pre: bool):
    """``fn(h)`` edits ``h`` (``[1, T, width]``, a clone) in place: the module's first input or its output."""
    def pre_hook(_m, args):
        h = args[0].clone()
        fn(h)
        return (h, *args[1:])

    def post_hook(_m, _a, out):
        h = (out[0] if isinstance(out, tuple) else out).clone()
        fn(h)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = module.register_forward_pre_hook(pre_hook) if pre else module.register_forward_hook(post_hook)
    try:
        yield
    finally:
        handle.remove()


def _neuron(subject, layer, pos, index, fn):
    """The neuron's activation (the out projection's input) at ``pos`` replaced by ``fn`` of it."""
    def edit(h):
        h[0, pos, index] = fn(h[0, pos, index])
    return _hook(subject.out_proj(layer), edit, pre=True)


def _site(subject, layer, pos, fn):
    """The block's output (resid_post) at ``pos`` replaced by ``fn`` of it."""
    def edit(h):
        h[0, pos] = fn(h[0, pos])
    return _hook(subject.blocks()[layer], edit, pre=False)


def _features(sae, x: torch.Tensor) -> torch.Tensor:
    """TopK features of a site vector, by hand in float64 (the random SAE: input scale 1, so its decoder rows are
    the directions; b_dec subtracted)."""
    assert sae.input_scale == 1.0 and sae.apply_b_dec_to_input
    pre = (x.double() - sae.b_dec.double()) @ sae.W_enc.double() + sae.b_enc.double()
    top = torch.argsort(pre, descending=True)[:sae.k]
    return torch.zeros_like(pre).index_put((top,), pre[top].clamp(min=0))


# ---- 1. a last-layer unit: attribution = its exact ablation in the frozen model ------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_last_layer_attribution_is_the_exact_frozen_ablation(subjects64, kind):
    subject = subjects64[kind]
    ids, last = _ids(subject), subject.info.n_layers - 1
    p = len(ids) // 2
    logits = _forward(subject, ids)
    order = torch.argsort(logits[p], descending=True)
    target = Target(p, int(order[0]), int(order[5]))
    sae = random_topk_sae(subject.d_model, 64, 4, layer=last, seed=3)
    att = attribute(subject, ids, target, (sae,))
    assert att.value == pytest.approx(_value(logits[p], target), rel=1e-5, abs=1e-5)
    scores = att.scores[(MLP, last)]
    # after the last MLP nothing mixes positions: only position p's units reach the target at p
    assert not scores[:p].any() and not scores[p + 1:].any() and scores[p].abs().max() > 1e-3

    pinned = Pinned(subject)
    m0 = _value(pinned.run(ids)[p], target)
    for n in torch.argsort(scores[p].abs(), descending=True)[:3].tolist() + [7]:
        with _neuron(subject, last, p, n, lambda a: 0.0 * a):
            removed = m0 - _value(pinned.run(ids)[p], target)
        assert float(scores[p, n]) == pytest.approx(removed, rel=1e-4, abs=1e-7), (kind, n)

    fs = att.scores[(sae.source, last)]
    i = int(fs[p].abs().argmax())
    assert not fs[:p].any() and abs(float(fs[p, i])) > 1e-3
    site = {}
    with _site(subject, last, p, lambda x: site.setdefault("x", x.clone())):
        _forward(subject, ids)
    f = _features(sae, site["x"])[i]
    assert float(att.acts[(sae.source, last)][p, i]) == pytest.approx(float(f), rel=1e-5, abs=1e-6)
    with _site(subject, last, p, lambda x: x - f * sae.W_dec[i].double()):
        removed = m0 - _value(pinned.run(ids)[p], target)
    assert float(fs[p, i]) == pytest.approx(removed, rel=1e-4, abs=1e-7)


# ---- 2. across layers: attribution = a finite difference in the pinned model ---------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_attribution_across_layers_is_a_finite_difference_of_the_pinned_model(subjects64, kind):
    subject = subjects64[kind]
    ids = _ids(subject)
    p, eps = len(ids) - 2, 1e-4
    logits = _forward(subject, ids)
    target = Target(p, int(logits[p].argmax()))
    sae = random_topk_sae(subject.d_model, 64, 4, layer=0, seed=5)
    att = attribute(subject, ids, target, (sae,))
    pinned = Pinned(subject)
    pinned.run(ids)

    def central(edit, run=pinned.run) -> float:
        """(m(+eps) − m(−eps)) / 2eps of the pinned model, ``edit(sign)`` the perturbing context."""
        values = []
        for sign in (1.0, -1.0):
            with edit(sign):
                values.append(_value(run(ids)[p], target))
        return (values[0] - values[1]) / (2 * eps)

    checked, unpinned_gap = 0, 0.0
    for layer in range(subject.info.n_layers - 1):
        s, a = att.scores[(MLP, layer)], att.acts[(MLP, layer)]
        assert not s[p + 1:].any()  # causal: later positions reach nothing at p
        top = torch.argsort(s[:p + 1].abs().reshape(-1), descending=True)[:2].tolist()
        earlier = int(s[:p].abs().reshape(-1).argmax())  # through attention
        for t, n in [divmod(i, s.shape[1]) for i in top + [earlier]] + [(p - 3, 5)]:
            def perturbed(sign):
                return _neuron(subject, layer, t, n, lambda v: v + sign * eps)
            want = float(a[t, n]) * central(perturbed)
            assert float(s[t, n]) == pytest.approx(want, rel=1e-4, abs=1e-6 * float(s.abs().max())), (layer, t, n)
            checked += 1
            if t < p:  # through attention: the unfrozen model's derivative is another number
                plain = float(a[t, n]) * central(perturbed, lambda ids: _forward(subject, ids))
                unpinned_gap = max(unpinned_gap, abs(plain - want) / max(abs(want), 1e-12))
    assert checked >= 8 and unpinned_gap > 1e-3  # the pinned reference differs from the plain model's

    fs, fa = att.scores[(sae.source, 0)], att.acts[(sae.source, 0)]
    t, i = divmod(int(fs[:p + 1].abs().reshape(-1).argmax()), fs.shape[1])
    d = sae.W_dec[i].double()
    want = float(fa[t, i]) * central(lambda sign: _site(subject, 0, t, lambda x: x + sign * eps * d))
    assert abs(want) > 1e-4 and float(fs[t, i]) == pytest.approx(want, rel=1e-4)


def test_graph_edge_is_a_finite_difference_of_the_pinned_model(subjects64):
    """connect's edge from a layer-0 neuron to a layer-1 neuron = a_i · ∂a_j/∂a_i, patterns and norms pinned."""
    subject = subjects64["llama"]
    ids = _ids(subject)
    p, eps = len(ids) - 1, 1e-4
    target = Target(p, int(_forward(subject, ids)[p].argmax()))
    att = attribute(subject, ids, target)
    s0, s1 = att.scores[(MLP, 0)], att.scores[(MLP, 1)]
    n1 = int(s1[p].abs().argmax())
    t0, n0 = divmod(int(s0[:p].abs().reshape(-1).argmax()), s0.shape[1])  # an earlier position: through attention
    nodes = [UnitAt(UnitId(MLP, 0, n0), t0, float(s0[t0, n0])), UnitAt(UnitId(MLP, 1, n1), p, float(s1[p, n1]))]
    graph = connect(subject, ids, att, nodes, keep=1.0)
    edge = {(e.source, e.target): e.weight for e in graph.edges}
    assert edge[(0, 2)] == nodes[0].value and edge[(1, 2)] == nodes[1].value  # to the target: the attributions

    pinned = Pinned(subject)
    pinned.run(ids)
    read = {}

    def a1(sign):
        with _neuron(subject, 0, t0, n0, lambda v: v + sign * eps), \
                _neuron(subject, 1, p, n1, lambda v: read.__setitem__(sign, float(v)) or v):
            pinned.run(ids)
        return read[sign]
    want = float(att.acts[(MLP, 0)][t0, n0]) * (a1(1.0) - a1(-1.0)) / (2 * eps)
    assert abs(want) > 1e-5 and edge[(0, 1)] == pytest.approx(want, rel=1e-4)


# ---- 3. check_by_ablation = separate forward passes with the unit zeroed ---------------------------------------

@pytest.mark.parametrize("kind", KINDS)
def test_check_by_ablation_equals_separate_passes(subjects, kind):
    subject = subjects[kind]
    ids = _ids(subject)
    T, L = len(ids), subject.info.n_layers
    sae = random_topk_sae(subject.d_model, 64, 4, layer=1, seed=7)
    clean = _forward(subject, ids)
    target = Target(T - 1, int(clean[-1].argmax()), int(clean[-1].argmin()))
    acts = {}
    hooks = [subject.out_proj(layer).register_forward_pre_hook(
        lambda _m, args, layer=layer: acts.__setitem__(layer, args[0][0].detach())) for layer in range(L)]
    site = {}
    try:
        with _site(subject, 1, T - 4, lambda x: site.setdefault("x", x.clone())):
            _forward(subject, ids)
    finally:
        for h in hooks:
            h.remove()
    # the most active neuron at a few (layer, position)s, two at one site, and an active feature
    # (positions near the end: Gemma's sliding window of 8 keeps the target from seeing the first ones)
    picks = [(0, T - 5, int(acts[0][T - 5].abs().argmax())), (1, T - 3, int(acts[1][T - 3].abs().argmax())),
             (1, T - 3, int(acts[1][T - 3].abs().argsort()[-2])),
             (L - 1, T - 1, int(acts[L - 1][T - 1].abs().argmax())), (L - 1, T - 2, 4)]
    units = [UnitAt(UnitId(MLP, layer, n), t, 0.25 * k) for k, (layer, t, n) in enumerate(picks)]
    f = _features(sae, site["x"])
    i = int(f.argmax())
    units.append(UnitAt(UnitId(sae.source, 1, i), T - 4, -1.5))
    got = check_by_ablation(subject, ids, target, units, (sae,))
    assert [c.unit for c in got] == units and [c.estimate for c in got] == [-u.value for u in units]

    m0 = _value(clean[-1], target)
    edits = [lambda layer=layer, t=t, n=n: _neuron(subject, layer, t, n, lambda a: 0.0 * a) for layer, t, n in picks]
    edits.append(lambda: _site(subject, 1, T - 4, lambda x: (x.double() - f[i] * sae.W_dec[i].double()).to(x.dtype)))
    for c, edit in zip(got, edits, strict=True):
        with edit():
            m = _value(_forward(subject, ids)[-1], target)
        # each value within float32's reach (1e-5, relative above magnitude 1) of the other computation's
        assert c.real == pytest.approx(m - m0, abs=1e-5 * (max(1.0, abs(m)) + max(1.0, abs(m0)))), c.unit
    assert max(abs(c.real) for c in got) > 1e-2  # the ablations move the target (the test can fail)


def test_check_by_ablation_refuses_what_it_cannot_do(subjects):
    subject = subjects["gpt2"]
    ids = _ids(subject)
    assert check_by_ablation(subject, ids, Target(1, 3), []) == []
    with pytest.raises(UserError, match="needs its dictionary"):
        check_by_ablation(subject, ids, Target(1, 3), [UnitAt(UnitId("sae:x@1", 1, 0), 1, 1.0)])
    with pytest.raises(UserError, match="empty"):
        attribute(subject, [], Target(0, 3))
    with pytest.raises(UserError, match=f"position {len(ids)} is out of range"):
        attribute(subject, ids, Target(len(ids), 3))
    with pytest.raises(UserError, match="not in the vocabulary"):
        attribute(subject, ids, Target(1, 3, 10 ** 6))


# ---- 4. relative activations, rankings, the layer map, Spearman ------------------------------------------------

def _random_scores(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {(MLP, 0): torch.randn(6, 7, generator=g), (MLP, 1): torch.randn(6, 7, generator=g),
            ("sae:x@1", 1): torch.randn(6, 4, generator=g), (MLP, 2): torch.randn(6, 7, generator=g)}


def test_relative_divides_by_the_corpus_maximum():
    acts = _random_scores()
    g = torch.Generator().manual_seed(1)
    m0 = torch.rand(7, generator=g) + 0.1
    m0[[1, 4]] = torch.tensor([0.0, -0.5])  # no positive maximum: 0
    maxima = {(MLP, 0): m0, ("sae:x@1", 1): torch.rand(4, generator=g) + 0.5, (MLP, 2): None}  # (mlp, 1): missing
    rel = relative(acts, maxima)
    for key, a in acts.items():
        m = maxima.get(key)
        a = a.numpy()
        want = a if m is None else np.where(m.numpy() > 0, a / np.where(m.numpy() > 0, m.numpy(), 1.0), 0.0)
        np.testing.assert_allclose(rel[key].numpy(), want, rtol=1e-6, atol=0)
    assert not rel[(MLP, 0)][:, [1, 4]].any() and torch.equal(rel[(MLP, 1)], acts[(MLP, 1)])


@pytest.mark.parametrize("position,largest,k", [(None, True, 10), (None, False, 5), (3, True, 12), (0, False, 40),
                                                (5, True, 1)])
def test_top_units_are_the_brute_force_top(position, largest, k):
    scores = _random_scores()
    acts = {key: s * 2 + 1 for key, s in scores.items()}
    got = top_units(scores, k, position=position, largest=largest, acts=acts)
    cands = [(f"{key}|{t}|{u}", float(s[t, u]), float(acts[key][t, u]))
             for key, s in scores.items() for t in range(s.shape[0]) for u in range(s.shape[1])
             if position is None or t == position]
    sign = 1.0 if largest else -1.0
    assert len(got) == min(k, len(cands))
    assert_same_top([f"{(g.unit.source, g.unit.layer)}|{g.position}|{g.unit.index}" for g in got],
                    [sign * g.value for g in got], [c[0] for c in cands], [sign * c[1] for c in cands], 0, 0)
    by_id = {c[0]: c[2] for c in cands}
    assert [g.activation for g in got] == [by_id[f"{(g.unit.source, g.unit.layer)}|{g.position}|{g.unit.index}"]
                                           for g in got]


def test_layer_position_map_and_spearman():
    scores = _random_scores()
    for reduce in ("max", "abs"):
        got = layer_position_map(scores, 3, reduce=reduce)
        want = np.zeros((3, 6))
        for (_, layer), s in scores.items():
            s = s.numpy().astype(np.float64)
            want[layer] = np.maximum(want[layer], s.max(1)) if reduce == "max" else want[layer] + np.abs(s).sum(1)
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    xs, ys = [0.3, -1.0, 2.0, 5.0, 0.1], [1.0, 0.5, 3.0, 2.0, -4.0]
    rx, ry = np.argsort(np.argsort(xs)), np.argsort(np.argsort(ys))
    assert spearman(xs, ys) == pytest.approx(float(np.corrcoef(rx, ry)[0, 1]), abs=1e-12)
    assert spearman(xs[:2], ys[:2]) is None and spearman([1.0] * 5, ys) is None


# ---- 5. frozen: values unchanged, gradients frozen, nothing left behind ----------------------------------------

def _hook_state(model):
    return [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in model.modules()]


@pytest.mark.parametrize("kind", KINDS)
def test_frozen_keeps_values_and_leaves_nothing_behind(subjects, kind):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    subject = subjects[kind]
    ids = torch.tensor([_ids(subject)])
    emb = subject.model.get_input_embeddings()
    hooks, mapping = _hook_state(subject.model), dict(ALL_ATTENTION_FUNCTIONS._local_mapping)

    def logits_and_grad():
        x = emb(ids).detach().requires_grad_(True)
        out = subject.model(inputs_embeds=x, use_cache=False).logits
        return out.detach(), torch.autograd.grad(out[0, -1, 3], x)[0]

    plain, plain_grad = logits_and_grad()
    with frozen(subject):
        assert ALL_ATTENTION_FUNCTIONS._local_mapping != mapping
        inside, frozen_grad = logits_and_grad()
    assert (inside - plain).abs().max() <= 1e-6
    assert (frozen_grad - plain_grad).abs().max() > 1e-4  # gradients do change (the test can fail)
    with pytest.raises(RuntimeError, match="boom"):
        with frozen(subject):
            raise RuntimeError("boom")
    assert _hook_state(subject.model) == hooks and dict(ALL_ATTENTION_FUNCTIONS._local_mapping) == mapping
    after, after_grad = logits_and_grad()
    assert torch.equal(after, plain) and torch.equal(after_grad, plain_grad)


def test_frozen_restores_an_attention_function_set_before(subjects):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    local, mine = ALL_ATTENTION_FUNCTIONS._local_mapping, object()
    local["sdpa"] = mine
    try:
        with frozen(subjects["llama"]):
            assert local["sdpa"] is not mine
        assert local["sdpa"] is mine
    finally:
        local.pop("sdpa", None)


def test_frozen_norm_is_linear_and_attention_patterns_constant(subjects):
    """Inside frozen a LayerNorm's vector-Jacobian product is w·v/s minus its mean (s the clean denominator), an
    RMSNorm's gain·v/s; queries and keys receive no gradient while values do."""
    g = torch.Generator().manual_seed(0)
    for kind in ("gpt2", "gemma"):
        subject = subjects[kind]
        norm = next(m for m in subject.model.modules() if _is_norm(m) and m.weight.shape[0] == subject.d_model)
        x = (torch.randn(2, 5, subject.d_model, generator=g, dtype=torch.float64) * 3).float().requires_grad_(True)
        v = torch.randn(2, 5, subject.d_model, generator=g)
        with frozen(subject):
            grad = torch.autograd.grad((norm(x) * v).sum(), x)[0].double()
        xd, vd = x.detach().double(), v.double()
        if kind == "gpt2":
            s = (xd.var(-1, unbiased=False, keepdim=True) + norm.eps).sqrt()
            wv = norm.weight.double() * vd / s
            want = wv - wv.mean(-1, keepdim=True)
        else:
            s = (xd.pow(2).mean(-1, keepdim=True) + norm.eps).sqrt()
            want = (1.0 + norm.weight.double()) * vd / s
        torch.testing.assert_close(grad, want, rtol=1e-5, atol=1e-6)
    for kind in ("llama", "gemma"):
        subject = subjects[kind]
        subject.model.zero_grad(set_to_none=True)
        with frozen(subject):
            subject.model(input_ids=torch.tensor([_ids(subject)]), use_cache=False).logits[0, -1].sum().backward()
        attn = subject.blocks()[0].self_attn
        assert all(p.grad is None or not p.grad.any() for p in (attn.q_proj.weight, attn.k_proj.weight))
        assert attn.v_proj.weight.grad.abs().max() > 0
        subject.model.zero_grad(set_to_none=True)
