"""Hooked activations of the embedded SmolLM2 equal an independent computation from its plain HF forward pass."""

from __future__ import annotations

import torch

from analysis.activations import mlp_activations
from tests.helpers import plain_forward_reference, rel_err


def test_embedded_smollm2_activations_equal_plain_forward(embedded_smollm2):
    subject = embedded_smollm2
    assert subject.info.n_layers == 30 and subject.info.d_mlp == 1536 and subject.info.act_fn == "silu"
    ids = subject.tokenizer(["The capital of France is Paris, and the capital of Italy is Rome."],
                            return_tensors="pt").input_ids
    mask = torch.ones_like(ids)
    ref, _ = plain_forward_reference(subject, ids, mask)
    got = mlp_activations(subject, ids, mask, list(range(30)))
    for layer in range(30):
        assert rel_err(got[layer], ref[layer]) <= 1e-5
