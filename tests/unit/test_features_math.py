"""Dictionary features on a tiny model, no database: a feature's projection is its decoder row through the
unembedding; the harvest leaves a dictionary's inputs out at massive activations."""

from __future__ import annotations

import pytest
import torch

from analysis.types import MLP, UserError
from tests.helpers import random_topk_sae


def test_feature_projection_is_its_decoder_row_through_the_unembedding(tiny_folders):
    """hi-i of a feature = lm_head(final_norm(W_dec[f])) computed by hand; hi-c of a resid_post feature of the
    last layer has no block after it, so it equals hi-i; a resid_pre feature of that layer runs the last block."""
    from analysis.models import load_model
    from analysis.topics.projection import projection_logits

    subject = load_model(str(tiny_folders["llama"]))
    last = subject.info.n_layers - 1
    sae = random_topk_sae(32, 16, 4, layer=last)
    got = projection_logits(subject, last, "hi-i", [3, 7], sae=sae)
    with torch.no_grad():
        h = sae.W_dec[[3, 7]]
        norm = subject.model.model.norm
        var = h.pow(2).mean(-1, keepdim=True)
        expect = (h * torch.rsqrt(var + norm.variance_epsilon) * norm.weight) @ subject.model.lm_head.weight.T
    assert torch.allclose(got, expect, atol=1e-4)
    assert torch.allclose(projection_logits(subject, last, "hi-c", [3, 7], sae=sae), got, atol=1e-5)
    pre = random_topk_sae(32, 16, 4, layer=last, site="resid_pre")
    assert not torch.allclose(projection_logits(subject, last, "hi-c", [3], sae=pre),
                              projection_logits(subject, last, "hi-i", [3], sae=pre), atol=1e-3)
    with pytest.raises(UserError, match="hi-\\* modes"):
        projection_logits(subject, last, "lo-c", [3], sae=sae)


def test_dictionaries_are_not_read_at_massive_activations(tiny_folders):
    """A token whose residual vector is 1000x the others' (an attention sink) is left out of a dictionary's
    statistics and shows 0 in its records; the neurons still see it."""
    from analysis.activations import neuron_reader, sae_reader
    from analysis.config import HarvestConfig
    from analysis.harvest.driver import run_harvest
    from analysis.harvest.summary import summarise
    from analysis.models import load_model
    from analysis.sae.baselines import baseline_dictionary
    from analysis.types import Window

    subject = load_model(str(tiny_folders["llama"]))
    sink = 7
    with torch.no_grad():
        subject.model.model.embed_tokens.weight[sink] *= 1000.0
    g = torch.Generator().manual_seed(0)
    windows = []
    for i in range(8):
        ids = torch.randint(10, 200, (12,), generator=g)
        ids[3] = sink
        windows.append(Window(i, i, 0, tuple(int(t) for t in ids)))
    basis = baseline_dictionary("basis", 32, 0, "resid_pre")
    cfg = HarvestConfig(layers=(0,), seq_len=12, top_k=4, pool=8, random_k=4, per_bin=1, min_token_count=1)
    state, table = run_harvest(subject, windows, cfg, progress=False, readers=[neuron_reader(0), sae_reader(basis)])
    by = {s.source: s for s in summarise(state, table)}
    feats = by[basis.source]
    assert feats.n_tokens == 8 * 11  # the sink position of every window is left out
    assert by[MLP].n_tokens == 8 * 12
    assert float(abs(feats.top_acts[:, :, 3]).max()) == 0.0  # shown as 0 in the records
    emb = subject.model.model.embed_tokens.weight.detach()
    assert float(feats.vmax.max()) < float(emb[sink].abs().max()) / 10
