"""The embedded SmolLM2 end to end: harvest a little of the embedded corpus, export, re-run a record."""

from __future__ import annotations

import json

import numpy as np
import torch

from analysis.__main__ import main
from analysis.activations import mlp_activations
from analysis.config import HarvestConfig
from analysis.harvest.driver import run_harvest
from analysis.harvest.summary import summarise
from analysis.models import load_model
from analysis.types import Window
from tests.helpers import tiny_model_folder


def test_embedded_harvest_export_and_trace_back(embedded_smollm2, tmp_path, capsys):
    db = tmp_path / "int.duckdb"
    assert main(["harvest", "--db", str(db), "--layers", "3,29", "--max-tokens", "1536", "--quiet"]) == 0
    assert main(["export", "--db", str(db), "--layer", "29", "--neuron", "100"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["hook_point"] == "model.layers.29.mlp.down_proj:input"
    assert rec["model_id"].startswith("smollm2-135m@")
    top = rec["most_positive_activation_records"][0]
    # the record names its window: re-running those token ids gives the stored activations
    ids = torch.tensor([top["token_ids"]])
    again = mlp_activations(embedded_smollm2, ids, None, [29])[29][0, :, 100].numpy()
    np.testing.assert_allclose(np.array(top["activations"]), again, rtol=2e-3, atol=2e-3)
    assert "".join(top["tokens"]) == embedded_smollm2.tokenizer.decode(top["token_ids"])
    assert abs(max(top["activations"]) - rec["max_activation"]) < 1e-2 * max(1.0, abs(rec["max_activation"]))
    assert sum(rec["histogram"]["counts"]) == rec["n_tokens"] == 1536


def test_bos_is_prepended_but_never_recorded(tmp_path):
    """A tokenizer that adds BOS: windows run after a BOS, and the BOS position is not part of any record."""
    subject = load_model(str(tiny_model_folder(tmp_path / "bos", "gemma", bos=True)))
    assert subject.info.prepend_bos
    rng = np.random.default_rng(3)
    windows = [Window(i, 0, 8 * i, tuple(int(t) for t in rng.integers(3, 200, size=8))) for i in range(6)]
    cfg = HarvestConfig(layers=(1,), seq_len=8, top_k=3, random_k=2, quantile_bins=2, per_bin=1, pool=4, batch_size=4,
                        token_table=10, min_token_count=1)
    state, table = run_harvest(subject, windows, cfg, progress=False)
    s = summarise(state, table)[0]
    assert s.n_tokens == 48
    bos = subject.tokenizer.bos_token_id
    for rank in range(3):
        wid = int(s.top_wid[rank, 0])
        ids = torch.tensor([[bos, *windows[wid].token_ids]])
        expect = mlp_activations(subject, ids, None, [1])[1][0, 1:, 0].numpy()
        np.testing.assert_allclose(s.top_acts[rank, 0].astype(np.float64), expect, rtol=1e-3, atol=1e-3)
