"""Word-pool topics, the projections: every mode against an independent computation (hand formulas, hooks on
the full model), never against its own output; topics of a tiny model's units."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.topics import (Polarity, ProjectionMode, TopicConfig, count_cooccurrences, project_rankings,
                             projection_logits, topics_for_units)
from analysis.types import MLP, UnitId
from analysis.words import is_pool_word

# ---------------------------------------------------------------- helpers (independent routes)


@pytest.fixture(scope="module")
def tiny_models(tiny_folders):
    from analysis.models import load_model

    return {kind: load_model(str(folder)) for kind, folder in tiny_folders.items()}


def hand_final_logits(subject, x: torch.Tensor) -> torch.Tensor:
    """Final norm written out from its formula and the config's epsilon, then the unembedding matrix."""
    cfg = subject.model.config
    base = subject.base()
    x = x.double()
    if subject.info.architecture in ("gpt2", "gpt_neox"):
        ln = base.ln_f if hasattr(base, "ln_f") else base.final_layer_norm
        eps = getattr(cfg, "layer_norm_epsilon", None) or cfg.layer_norm_eps
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps) * ln.weight.double() + ln.bias.double()
    else:
        gain = base.norm.weight.double()
        if subject.info.architecture.startswith("gemma"):
            gain = 1.0 + gain
        y = x / torch.sqrt((x**2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * gain
    return y @ subject.model.get_output_embeddings().weight.double().T


def neuron_vectors(subject, layer: int, neurons) -> torch.Tensor:
    """w_out rows plus the output projection's bias (the reference's ``linear(x, w, b)`` on a one-hot)."""
    proj = subject.out_proj(layer)
    v = subject.w_out(layer)[list(neurons)].detach().clone()
    if getattr(proj, "bias", None) is not None:
        v = v + proj.bias.detach()
    return v


def _replace_hidden(out, h):
    if isinstance(out, tuple):
        return (h,) + tuple(out[1:])
    return h


def hook_route_logits(subject, layer: int, vectors: torch.Tensor, where: str) -> torch.Tensor:
    """Run the *whole* model on B one-token inputs, overwriting the residual stream with ``vectors``:
    where='after' replaces block ``layer``'s output, 'before' replaces its input. Returns model logits."""
    block = subject.blocks()[layer]
    B = len(vectors)
    h = vectors[:, None, :].to(torch.float32)

    def post(_m, _args, out):
        return _replace_hidden(out, h)

    def pre(_m, args, kwargs):
        if args:
            return (h,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handle = (block.register_forward_hook(post) if where == "after"
              else block.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = subject.model(input_ids=torch.zeros((B, 1), dtype=torch.long), use_cache=False).logits[:, 0]
    finally:
        handle.remove()
    cap = getattr(subject.model.config, "final_logit_softcapping", None)
    return logits.double(), cap


def _softcap(x, cap):
    return x if cap is None else torch.tanh(x / cap) * cap


# ---------------------------------------------------------------- projection


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma", "neox"])
def test_hi_i_matches_hand_final_norm_and_unembedding(tiny_models, kind):
    subject = tiny_models[kind]
    neurons = [0, 5, 17, subject.info.d_mlp - 1]
    ours = projection_logits(subject, 1, "hi-i", neurons).double()
    with torch.no_grad():
        expected = hand_final_logits(subject, neuron_vectors(subject, 1, neurons))
    assert ours.shape == (len(neurons), subject.model.get_output_embeddings().weight.shape[0])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma", "neox"])
def test_hi_c_matches_full_model_with_residual_replaced(tiny_models, kind):
    subject = tiny_models[kind]
    neurons = [1, 2, 30, 47]
    ours = projection_logits(subject, 0, ProjectionMode.HI_C, neurons, batch_size=3).double()
    with torch.no_grad():
        expected, cap = hook_route_logits(subject, 0, neuron_vectors(subject, 0, neurons), where="after")
    torch.testing.assert_close(_softcap(ours, cap), expected, rtol=1e-4, atol=1e-4)
    # the last layer has no remaining blocks: Hi-C is Hi-I there
    last = subject.info.n_layers - 1
    torch.testing.assert_close(projection_logits(subject, last, "hi-c", neurons),
                               projection_logits(subject, last, "hi-i", neurons))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
def test_lo_modes_match_hook_routes(tiny_models, kind):
    subject = tiny_models[kind]
    dims = [0, 3, 31]
    onehots = torch.eye(32)[dims]
    with torch.no_grad():
        expected_c, cap = hook_route_logits(subject, 1, onehots, where="before")
    ours_c = projection_logits(subject, 1, "lo-c", dims).double()
    torch.testing.assert_close(_softcap(ours_c, cap), expected_c, rtol=1e-4, atol=1e-4)

    # lo-i: block 1 alone, read at its output, then the final norm and unembedding by hand
    block = subject.blocks()[1]
    seen = {}

    def grab(_m, _a, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out)[:, 0].detach().clone()

    handle = block.register_forward_hook(grab)
    try:
        hook_route_logits(subject, 1, onehots, where="before")
    finally:
        handle.remove()
    with torch.no_grad():
        expected_i = hand_final_logits(subject, seen["h"])
    torch.testing.assert_close(projection_logits(subject, 1, "lo-i", dims).double(), expected_i, rtol=1e-4, atol=1e-4)


def test_rankings_are_the_extremes_of_independent_logits(tiny_models):
    subject = tiny_models["llama"]
    neurons = [4, 9]
    with torch.no_grad():
        logits = hand_final_logits(subject, neuron_vectors(subject, 2, neurons)).numpy()
    rankings = project_rankings(subject, 2, "hi-i", neurons, tau=20, batch_size=1)
    assert [(r.unit.index, r.polarity) for r in rankings] == [(4, Polarity.POS), (4, Polarity.NEG),
                                                        (9, Polarity.POS), (9, Polarity.NEG)]
    for r in rankings:
        row = logits[neurons.index(r.unit.index)]
        order = np.argsort(-row if r.polarity == Polarity.POS else row, kind="stable")[:20]
        assert r.mode == "hi-i" and r.unit == UnitId(MLP, 2, r.unit.index) and len(r.token_ids) == 20
        np.testing.assert_allclose(r.scores, row[order], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(row[list(r.token_ids)], row[order], rtol=1e-4, atol=1e-4)


def test_projection_rejects_bad_units(tiny_models):
    from analysis.types import UserError

    subject = tiny_models["gpt2"]
    with pytest.raises(UserError, match="neuron 999"):
        projection_logits(subject, 0, "hi-i", [999])
    with pytest.raises(UserError, match="residual dimension 32"):
        projection_logits(subject, 0, "lo-c", [32])
    with pytest.raises(UserError):
        projection_logits(subject, 7, "hi-i", [0])


def test_topics_for_units_on_a_tiny_model(tiny_models):
    subject = tiny_models["gpt2"]
    vocab = [subject.tokenizer.decode([i]).strip().lower() for i in range(len(subject.tokenizer))]
    words = sorted({w for w in vocab if is_pool_word(w)})
    assert len(words) >= 5
    rng = np.random.default_rng(0)
    stats = count_cooccurrences([" ".join(rng.choice(words, 30)) for _ in range(50)], "tiny", min_count=1,
                                progress=False)
    out = topics_for_units(subject, 1, [0, 3], "hi-c", stats, TopicConfig(k=3, tau=400, theta_l=-1.0),
                           polarities=["neg"])
    assert [(r.unit.index, r.polarity, r.mode) for r in out] == [(0, Polarity.NEG, "hi-c"), (3, Polarity.NEG, "hi-c")]
    for r in out:
        assert set(r.pool.words) == set(words)  # tau covers the whole vocabulary
        assert r.topics and all(len(t.words) == 3 and t.optimal for t in r.topics)
