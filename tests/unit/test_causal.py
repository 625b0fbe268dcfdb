"""The causal lens: interventions on neurons and features, checked against independent computations."""

from __future__ import annotations

import pytest
import torch

from analysis.causal import Edit, ablate, ablation_edit, generate, steer, steering_edit, unit_edit
from analysis.types import MLP, UnitId, UserError

KINDS = ("gpt2", "llama", "gemma", "neox")


@pytest.fixture(scope="module")
def subjects(tiny_folders):
    from analysis.models import load_model

    return {k: load_model(str(tiny_folders[k])) for k in KINDS}


def _ids(subject, text="The quick brown fox jumps over the lazy dog. Paris is the capital of France."):
    return subject.tokenize(text)


def _logits(subject, ids):
    with torch.inference_mode():
        return subject.model(input_ids=torch.tensor([subject.bos_prefix + ids]), use_cache=False).logits


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_the_clean_value_changes_nothing_bit_for_bit(subjects, kind):
    subject = subjects[kind]
    ids = _ids(subject)
    plain = _logits(subject, ids)
    with unit_edit(subject, UnitId(MLP, 1, 5), Edit(1.0, 0.0)):
        same = _logits(subject, ids)
    assert torch.equal(plain, same)
    a = ablate(subject, ids, UnitId(MLP, 1, 5), Edit(1.0, 0.0))
    assert a.clean_logprob == a.ablated_logprob  # the two rows of one batch


@pytest.mark.parametrize("kind", KINDS)
def test_neuron_ablation_equals_an_independent_computation(subjects, kind):
    """Zeroing neuron n of layer L at the out-projection's input = subtracting a_n · W_out[:, n] from the MLP's
    output (computed from the activations and the weights, by a hook on the MLP module itself)."""
    from analysis.activations import mlp_activations

    subject = subjects[kind]
    ids, layer, n = _ids(subject), 1, 7
    x = torch.tensor([subject.bos_prefix + ids])
    a_n = mlp_activations(subject, x, None, [layer])[layer][0, :, n]
    w = subject.out_proj(layer).weight.detach().float()  # nn.Linear [d_model, d_mlp]; GPT-2's Conv1D [d_mlp, d_model]
    w_col = w[n] if type(subject.out_proj(layer)).__name__ == "Conv1D" else w[:, n]

    def by_hand(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out - (a_n[:, None] * w_col[None, :]).to(out.dtype)[None]
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handle = subject.blocks()[layer].mlp.register_forward_hook(by_hand)
    try:
        with torch.inference_mode():
            want = torch.log_softmax(subject.model(input_ids=x, use_cache=False).logits.float(), -1)
    finally:
        handle.remove()
    got = ablate(subject, ids, UnitId(MLP, layer, n), ablation_edit("zero"))
    nxt = torch.tensor(ids[1:])
    start = len(subject.bos_prefix)
    want_next = want[0, start:-1].gather(-1, nxt[:, None])[:, 0]
    assert torch.allclose(torch.tensor(got.ablated_logprob), want_next, atol=1e-5)
    assert got.activations == pytest.approx(a_n[start:].tolist(), rel=1e-5, abs=1e-5)  # a batch of two rows
    assert any(abs(d) > 1e-6 for d in got.delta)  # the neuron matters somewhere (the test can fail)


def test_feature_edit_keeps_the_error_term_and_moves_along_its_direction(subjects):
    from tests.helpers import random_topk_sae

    subject = subjects["llama"]
    sae = random_topk_sae(subject.d_model, 64, 8, layer=1, site="resid_post")
    ids = _ids(subject)
    unit = UnitId(sae.source, 1, 3)
    plain = _logits(subject, ids)
    with unit_edit(subject, unit, Edit(1.0, 0.0), sae):
        assert torch.equal(_logits(subject, ids), plain)
    # adding 2 along the decoder direction, by hand: the block's output plus 2 · W_dec[3]
    d = sae.W_dec[3] / sae.input_scale

    def by_hand(_module, _args, output):
        return (output[0] + 2.0 * d, *output[1:]) if isinstance(output, tuple) else output + 2.0 * d

    handle = subject.blocks()[1].register_forward_hook(by_hand)
    try:
        want = _logits(subject, ids)
    finally:
        handle.remove()
    with unit_edit(subject, unit, Edit(1.0, 2.0), sae):
        got = _logits(subject, ids)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_hooks_never_leak(subjects):
    subject = subjects["gpt2"]
    ids = _ids(subject)
    plain = _logits(subject, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with unit_edit(subject, UnitId(MLP, 0, 1), Edit(0.0, 50.0)):
            assert not torch.equal(_logits(subject, ids), plain)
            raise RuntimeError("boom")
    assert torch.equal(_logits(subject, ids), plain)
    with pytest.raises(UserError, match="not a usable number"):
        with unit_edit(subject, UnitId(MLP, 0, 1), Edit(float("nan"), 0.0)):
            pass
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in subject.model.modules())


def test_steering_zero_is_plain_and_a_seed_repeats(subjects):
    subject = subjects["llama"]
    prompt = _ids(subject, "Paris is the capital of")
    unit = UnitId(MLP, 1, 2)
    s = steer(subject, prompt, unit, steering_edit(unit, 3.0, scale=1.0), max_new_tokens=12)
    assert s.steered == s.plain and len(s.plain) == 12
    assert s.plain == generate(subject, prompt, 12, 0.0, 0)  # greedy = the plain model's own generation
    hot = steer(subject, prompt, unit, steering_edit(unit, 3.0, clamp=40.0), max_new_tokens=12, temperature=1.0,
                seed=5)
    again = steer(subject, prompt, unit, steering_edit(unit, 3.0, clamp=40.0), max_new_tokens=12, temperature=1.0,
                  seed=5)
    assert hot.steered == again.steered and hot.plain == again.plain
    assert hot.steered != hot.plain  # a clamp of 40 x max moves the tiny model (the test can fail)


def test_bad_input_gets_messages(subjects):
    subject = subjects["gpt2"]
    unit = UnitId(MLP, 0, 1)
    with pytest.raises(UserError, match="at least two tokens"):
        ablate(subject, _ids(subject, "a")[:1], unit, Edit(0.0, 0.0))
    with pytest.raises(UserError, match="context"):
        ablate(subject, _ids(subject) * 20, unit, Edit(0.0, 0.0))
    with pytest.raises(UserError, match="empty"):
        generate(subject, [], 4, 0.0, 0)
    for bad in (float("inf"), float("nan"), 1e9):
        with pytest.raises(UserError, match="usable number"):
            steering_edit(unit, 2.0, clamp=bad)
    with pytest.raises(UserError, match="does not exist"):
        ablate(subject, _ids(subject), UnitId(MLP, 0, 10_000), Edit(0.0, 0.0))
    with pytest.raises(UserError, match="layer 9 does not exist"):
        ablate(subject, _ids(subject), UnitId(MLP, 9, 0), Edit(0.0, 0.0))


@pytest.mark.parametrize("kind", KINDS)
def test_the_shared_prefix_changes_nothing(subjects, kind):
    """Running the blocks before the unit's layer once (then two rows) gives what two full rows give."""
    subject = subjects[kind]
    ids, unit = _ids(subject), UnitId(MLP, 2, 4)
    got = ablate(subject, ids, unit, Edit(0.0, 3.0))
    x = torch.tensor([subject.bos_prefix + ids] * 2)
    with torch.inference_mode(), unit_edit(subject, unit, Edit(0.0, 3.0), rows=torch.tensor([False, True])):
        full = torch.log_softmax(subject.model(input_ids=x, use_cache=False).logits.float(), -1)
    nxt = torch.tensor(ids[1:])
    start = len(subject.bos_prefix)
    for row, mine in ((0, got.clean_logprob), (1, got.ablated_logprob)):
        want = full[row, start:-1].gather(-1, nxt[:, None])[:, 0]
        assert torch.allclose(torch.tensor(mine), want, atol=1e-5), (kind, row)
    assert torch.allclose(torch.tensor(got.clean_logprob), torch.log_softmax(_logits(subject, ids).float(), -1)[
        0, start:-1].gather(-1, nxt[:, None])[:, 0], atol=1e-5)
