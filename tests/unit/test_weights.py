"""Weight-based related tokens and neurons against the published formulas, computed from the state dict."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.models import load_model
from analysis.weights import related_weights


def _formulas(sd: dict, kind: str, layer: int, neuron: int, n_layers: int):
    """Independent numpy version: (input token scores, output token scores, {(l1, n1): up}, {(l2, n2): down})."""
    g = {k: v.detach().double().numpy() for k, v in sd.items()}
    if kind == "gpt2":
        emb, unemb, g_final = g["transformer.wte.weight"], g["lm_head.weight"] if "lm_head.weight" in g else g["transformer.wte.weight"], g["transformer.ln_f.weight"]
        g_mlp = lambda l: g[f"transformer.h.{l}.ln_2.weight"]  # noqa: E731
        w_in = lambda l: g[f"transformer.h.{l}.mlp.c_fc.weight"]  # [d, d_mlp]  # noqa: E731
        w_out = lambda l: g[f"transformer.h.{l}.mlp.c_proj.weight"]  # [d_mlp, d]  # noqa: E731
    else:
        emb = g["model.embed_tokens.weight"]
        unemb = g.get("lm_head.weight", emb)
        plus = 1.0 if kind == "gemma" else 0.0
        g_final = g["model.norm.weight"] + plus
        norm = "pre_feedforward_layernorm" if kind == "gemma" else "post_attention_layernorm"
        g_mlp = lambda l: g[f"model.layers.{l}.{norm}.weight"] + plus  # noqa: E731
        w_in = lambda l: g[f"model.layers.{l}.mlp.gate_proj.weight"].T  # noqa: E731
        w_out = lambda l: g[f"model.layers.{l}.mlp.down_proj.weight"].T  # noqa: E731
    tok_in = emb @ np.diag(g_mlp(layer)) @ w_in(layer)[:, neuron]
    tok_out = w_out(layer)[neuron] @ np.diag(g_final) @ unemb.T
    up = {(l1, n1): v for l1 in range(layer) for n1, v in enumerate(w_out(l1) @ np.diag(g_mlp(layer)) @ w_in(layer)[:, neuron])}
    down = {(l2, n2): v for l2 in range(layer + 1, n_layers)
            for n2, v in enumerate(w_out(layer)[neuron] @ np.diag(g_mlp(l2)) @ w_in(l2))}
    return tok_in, tok_out, up, down


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
def test_related_weights_match_the_formulas(tiny_folders, kind):
    subject = load_model(str(tiny_folders[kind]))
    layer, neuron, k = 1, 7, 5
    rel = related_weights(subject, layer, neuron, k=k)
    tok_in, tok_out, up, down = _formulas(subject.model.state_dict(), kind, layer, neuron, subject.info.n_layers)
    np.testing.assert_allclose([l.weight for l in rel.input_tokens_pos], np.sort(tok_in)[::-1][:k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([l.weight for l in rel.input_tokens_neg], np.sort(tok_in)[:k], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([l.weight for l in rel.output_tokens_pos], np.sort(tok_out)[::-1][:k], rtol=1e-4, atol=1e-5)
    for link in rel.input_tokens_pos:
        assert link.weight == pytest.approx(tok_in[link.token_id], rel=1e-4, abs=1e-5)
    for link in rel.upstream_pos + rel.upstream_neg:
        assert link.layer < layer and link.weight == pytest.approx(up[(link.layer, link.neuron)], rel=1e-4, abs=1e-5)
    for link in rel.downstream_pos + rel.downstream_neg:
        assert link.layer > layer and link.weight == pytest.approx(down[(link.layer, link.neuron)], rel=1e-4, abs=1e-5)
    assert rel.upstream_pos[0].weight == pytest.approx(max(up.values()), rel=1e-4)
    assert rel.downstream_neg[0].weight == pytest.approx(min(down.values()), rel=1e-4)
