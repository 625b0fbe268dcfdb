"""SAEs with the real things: a harvest job that refuses an SAE it cannot read, and the embedded SmolLM2's site and
features against its plain forward pass."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.activations import sae_reader, site_activations, unit_activations
from analysis.config import HarvestConfig
from analysis.sae.load import load_sae
from analysis.types import UserError
from tests.helpers import rel_err
from tests.sae_helpers import np_encode, random_weights, saelens_cfg, write_saelens


def _corpus(path: Path) -> Path:
    import random

    from tests.helpers import TINY_TEXT

    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(6):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(4))}) + "\n")
    return path


def test_harvest_refuses_an_sae_of_another_width(tiny_folders, tmp_path):
    from analysis.jobs.harvest import HarvestJob, harvest
    from analysis.progress import Progress

    rng = np.random.default_rng(7)
    corpus = _corpus(tmp_path / "docs.jsonl")
    narrow = write_saelens(tmp_path / "narrow", saelens_cfg("blocks.1.hook_resid_post", "standard", 16, 32),
                           random_weights(rng, 16, 32), False)
    job = HarvestJob(model=str(tiny_folders["gpt2"]), corpus=str(corpus), sae=(str(narrow),),
                     config=HarvestConfig(seq_len=16, batch_size=4))
    with pytest.raises(UserError, match=r"16-dimensional.*32-dimensional"):
        harvest(job, tmp_path / "db.duckdb", Progress(enabled=False))
    deep = write_saelens(tmp_path / "deep", saelens_cfg("blocks.7.hook_resid_post", "standard", 32, 32),
                         random_weights(rng, 32, 32), False)
    with pytest.raises(UserError, match="layer 7 does not exist"):
        harvest(HarvestJob(model=str(tiny_folders["gpt2"]), corpus=str(corpus), sae=(str(deep),),
                           config=HarvestConfig(seq_len=16)), tmp_path / "db2.duckdb", Progress(enabled=False))


def test_embedded_smollm2_site_and_features_equal_plain_forward(embedded_smollm2, tmp_path):
    subject = embedded_smollm2
    assert subject.d_model == 576
    rng = np.random.default_rng(13)
    w = random_weights(rng, 576, 64)
    sae = load_sae(str(write_saelens(tmp_path / "smol-l3", saelens_cfg("blocks.3.hook_resid_post", "standard", 576,
                                                                        64, apply_b_dec=True,
                                                                        model_name="smollm2-135m"), w, False)))
    ids = subject.tokenizer(["The capital of France is Paris, and the capital of Italy is Rome."],
                            return_tensors="pt").input_ids
    with torch.no_grad():
        hs = subject.model(input_ids=ids, output_hidden_states=True).hidden_states
    site = site_activations(subject, ids, None, [(3, "resid_post")])[(3, "resid_post")]
    assert rel_err(site[0], hs[4][0]) <= 1e-5
    feats = unit_activations(subject, ids, None, [sae_reader(sae)])[(sae.source, 3)][0].double().numpy()
    ref = np_encode(hs[4][0].double().numpy(), w, "relu", subtract_b_dec=True)
    scale = np.abs(hs[4][0].double().numpy()).max()  # SmolLM2's massive activations: float32 error grows with them
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5 * scale)
    assert (ref > 0).any()
