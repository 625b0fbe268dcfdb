"""Exports and score JSON against outside readers: OpenAI's own neuron_explainer loader and splits, and scores
recomputed with numpy from a `score --json` file alone."""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
import types

import numpy as np
import pytest

from analysis.__main__ import main
from analysis.config import HarvestConfig

# neuron_explainer.activations.activations imports these cloud-storage libraries at module level, only for its
# dataset download helpers; the loader and the slicing tested here never call them, so empty stand-ins do
# (boostedblob's ensure_session decorates two of those helpers at import time: an identity is enough).
sys.modules.setdefault("blobfile", types.ModuleType("blobfile"))
sys.modules.setdefault("boostedblob", types.SimpleNamespace(ensure_session=lambda f: f))

from neuron_explainer.activations.activations import (  # noqa: E402
    ActivationRecord, ActivationRecordSliceParams, NeuronId, NeuronRecord)
from neuron_explainer.fast_dataclasses import loads  # noqa: E402

LAYER, NEURON = 1, 2


def _export(db, model, capsys, *extra: str) -> str:
    assert main(["export", "--db", str(db), "--model", model, "--layer", str(LAYER), "--neuron", str(NEURON),
                 "--compact", *extra]) == 0
    return capsys.readouterr().out


def _objects(obj):
    """Every JSON object in ``obj``, outermost first."""
    if isinstance(obj, dict):
        yield obj
        for v in obj.values():
            yield from _objects(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _objects(v)


def test_openai_export_loads_into_their_dataclasses_and_splits(viewer_db, capsys):
    db, model = viewer_db
    text = _export(db, model, capsys, "--format", "openai")
    raw = json.loads(text)
    fields = {cls.__name__: {f.name for f in dataclasses.fields(cls)} | {"dataclass_name"}
              for cls in (NeuronRecord, ActivationRecord, NeuronId)}
    objects = list(_objects(raw))
    assert objects[0]["dataclass_name"] == "NeuronRecord"
    for o in objects:
        assert set(o) == fields[o["dataclass_name"]], o["dataclass_name"]

    rec = loads(text)
    assert isinstance(rec, NeuronRecord) and isinstance(rec.neuron_id, NeuronId)
    assert (rec.neuron_id.layer_index, rec.neuron_id.neuron_index) == (LAYER, NEURON)
    records = rec.most_positive_activation_records + rec.random_sample + sum(rec.random_sample_by_quantile, [])
    assert records and all(isinstance(r, ActivationRecord) for r in records)
    assert rec.max_activation == max(raw["most_positive_activation_records"][0]["activations"])

    # their interleaved splits, against an independent slicing: split j of s splits is records j, j+s, j+2s, ...
    cfg = HarvestConfig()
    top, rnd = raw["most_positive_activation_records"], raw["random_sample"]
    assert (len(top), len(rnd)) == (cfg.top_k, cfg.random_k)
    n = min(cfg.top_k // 4, cfg.random_k // 3)
    params = ActivationRecordSliceParams(n_examples_per_split=n)

    def split(rs, j, s):
        return [rs[s * k + j] for k in range(n)]

    expected = {"train": split(top, 0, 4),
                "calibration": split(top, 1, 4) + split(rnd, 0, 3),
                "valid": split(top, 2, 4) + split(rnd, 1, 3),
                "test": split(top, 3, 4) + split(rnd, 2, 3)}
    got = {"train": rec.train_activation_records(params), "calibration": rec.calibration_activation_records(params),
           "valid": rec.valid_activation_records(params), "test": rec.test_activation_records(params)}
    for name, want in expected.items():
        assert [(r.tokens, r.activations) for r in got[name]] == [(r["tokens"], r["activations"]) for r in want], name


def test_default_export_keeps_our_extras(viewer_db, capsys):
    db, model = viewer_db
    ours = json.loads(_export(db, model, capsys))
    strict = json.loads(_export(db, model, capsys, "--format", "openai"))
    assert "dataclass_name" not in ours
    assert set(ours) >= {"stddev", "max_activation", "min_activation", "frac_active", "n_tokens", "histogram",
                         "top_tokens", "model_id", "corpus_id", "run_id", "hook_point"}
    assert all(set(r) == {"tokens", "activations", "token_ids", "window_id", "doc_id", "offset"}
               for r in ours["most_positive_activation_records"] + ours["random_sample"])
    # the two formats carry the same values in the fields they share
    for key in ("mean", "variance", "skewness", "kurtosis", "quantile_boundaries"):
        assert strict[key] == ours[key], key
    for key in ("most_positive_activation_records", "random_sample"):
        assert [(r["tokens"], r["activations"]) for r in strict[key]] == \
            [(r["tokens"], r["activations"]) for r in ours[key]], key


def test_score_json_recomputes_from_the_file_alone(viewer_db, tiny_folders, tmp_path, capsys):
    src, model = viewer_db
    db = tmp_path / "score.duckdb"
    shutil.copy(src, db)  # scoring stores the explanation: keep the shared harvest as it is
    # the simulator reads the explanation; the tiny Llama (same tokenizer, rotary positions) takes the long prompt
    # that the tiny GPT-2's 128 learned positions cannot
    assert main(["score", "--db", str(db), "--model", model, "--layer", str(LAYER), "--neuron", str(NEURON),
                 "--explanation", "punctuation and numbers", "--simulator", "local-all-at-once",
                 "--simulator-model", str(tiny_folders["llama"]), "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["simulated_to_neuron_units"] == "simulated / 10 * max_activation"
    real = np.array([v for r in out["records"] for v in r["real"]], dtype=np.float64)
    sim = np.array([v for r in out["records"] for v in r["simulated"]], dtype=np.float64)
    pred = sim / 10 * out["max_activation"]
    assert out["max_activation"] > 0 and np.std(sim) > 0

    dx, dy = real - real.mean(), sim - sim.mean()
    assert out["score"] == pytest.approx((dx * dy).sum() / np.sqrt((dx * dx).sum() * (dy * dy).sum()), abs=1e-6)
    assert out["rsquared"] == pytest.approx(1 - np.mean((real - pred) ** 2) / np.mean(real ** 2), abs=1e-6)
    assert out["absolute_dev_explained"] == pytest.approx(1 - np.mean(np.abs(real - pred)) / np.mean(np.abs(real)),
                                                          abs=1e-6)
    # the max is the unit's, as its export gives it
    assert out["max_activation"] == json.loads(_export(db, model, capsys))["max_activation"]
