"""A harvest that plans its memory: passes that fit --max-memory store what one pass stores; a budget below one
layer, or a disk too small, is refused before anything is written; a pass that runs out of memory is retried
smaller; a writer killed in the write resumes without harvesting again, and its database does not grow each try."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
import torch

from analysis.__main__ import main
from analysis.harvest.memory import UnitBytes
from tests.helpers import REPO, tiny_model_folder

D_MLP = 256
BASE = 1e9
"""The process's memory before the harvest, as the plan sees it (fixed here, and the forward pass's measured
memory left out: the test's own RSS drifts by more than a tiny layer)."""


@pytest.fixture(scope="module")
def wide(tmp_path_factory):
    return tiny_model_folder(tmp_path_factory.mktemp("wide") / "llama", "llama", d_mlp=D_MLP)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    import json
    import random

    from tests.helpers import TINY_TEXT

    rng = random.Random(3)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(12):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(12))}) + "\n")
    return path


def _args(model, corpus, db, *extra) -> list[str]:
    return ["harvest", "--model", str(model), "--corpus", str(corpus), "--db", str(db), "--layers", "all",
            "--max-tokens", "600",
            "--seq-len", "16", "--top-k", "4", "--batch-size", "4", *extra]


def _tables(db) -> dict:
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL").fetchall()
                for t in ("unit_stats", "records", "samples", "token_means")} | {
            "runs": con.execute("SELECT status, layers, n_tokens FROM runs").fetchall()}
    finally:
        con.close()


def _one_layer_budget(monkeypatch) -> str:
    """A --max-memory that fits one layer above the (fixed) base, not two."""
    from analysis.config import HarvestConfig
    from analysis.harvest import memory

    monkeypatch.setattr(memory, "rss", lambda: BASE)
    monkeypatch.setattr(memory, "probe_forward", lambda *args: 0.0)
    # a layer with a token table of the whole vocabulary (300): more than the run's, less than two layers without one
    return str(int(memory.pass_peak({("mlp", 0): D_MLP}, UnitBytes.of(HarvestConfig(seq_len=16, top_k=4), 300, 4),
                                    BASE)))


@pytest.fixture(scope="module")
def one_pass(wide, corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("one") / "one.duckdb"
    assert main(_args(wide, corpus, db, "--quiet")) == 0
    return _tables(db)


def test_passes_that_fit_the_budget_store_what_one_pass_stores(wide, corpus, one_pass, tmp_path, capsys,
                                                               monkeypatch):
    db = tmp_path / "passes.duckdb"
    assert main(_args(wide, corpus, db, "--max-memory", _one_layer_budget(monkeypatch))) == 0
    err = capsys.readouterr().err
    assert "in 3 passes" in err and "pass 3: mlp L2" in err, err
    assert _tables(db) == one_pass


def test_a_budget_below_one_layer_or_a_small_disk_is_refused_before_anything_is_written(wide, corpus, tmp_path,
                                                                                       capsys, monkeypatch):
    from analysis.harvest import memory

    db = tmp_path / "refused.duckdb"
    monkeypatch.setattr(memory, "rss", lambda: BASE)
    monkeypatch.setattr(memory, "probe_forward", lambda *args: 0.0)
    assert main(_args(wide, corpus, db, "--max-memory", "1.001G")) == 2
    err = capsys.readouterr().err
    assert "one layer does not fit the memory budget" in err and "--max-memory" in err and "--top-k" in err, err
    assert not db.exists() or _tables(db)["runs"] == []
    from analysis.jobs import harvest_plan

    monkeypatch.setattr(harvest_plan.shutil, "disk_usage", lambda path: type("Usage", (), {"free": 10_000})())
    assert main(_args(wide, corpus, db)) == 2
    err = capsys.readouterr().err
    assert "not enough disk for this harvest" in err and "10 kB free" in err, err
    assert not db.exists() or _tables(db)["runs"] == []


def test_a_pass_out_of_memory_is_split_and_retried(wide, corpus, one_pass, tmp_path, capsys, monkeypatch):
    """A pass of several layers that runs out of (GPU) memory is split in two and run again, and says so; a
    one-layer pass is retried at half the batch. The results are the same."""
    from analysis.harvest.driver import PassTask

    real_call, seen = PassTask.__call__, []

    def tight(self, slots):
        seen.append((len(slots), self.config.batch_for(self.device)))
        if len(slots) > 1 or (len(seen) == 2 and self.config.batch_for(self.device) > 2):
            raise torch.OutOfMemoryError("CUDA out of memory (in the test)")
        return real_call(self, slots)

    monkeypatch.setattr(PassTask, "__call__", tight)
    db = tmp_path / "oom.duckdb"
    assert main(_args(wide, corpus, db)) == 0
    err = capsys.readouterr().err
    assert "pass 1 ran out of memory: split into two passes of 1 and 2 layers" in err, err
    assert "retried at a batch of 2 windows" in err, err
    assert seen[:3] == [(3, 4), (1, 4), (1, 2)]
    got = _tables(db)
    exact = ("records", "samples", "runs")
    assert {k: got[k] for k in exact} == {k: one_pass[k] for k in exact}
    # layer 0 at half the batch: its moments are merged from other batches (float64 rounding apart), and with them
    # each token row's z
    for a, b in zip(got["unit_stats"], one_pass["unit_stats"], strict=True):
        assert a[:3] == b[:3] and a[7:] == b[7:] and a[3:7] == pytest.approx(b[3:7], rel=1e-9, abs=1e-9)
    for a, b in zip(got["token_means"], one_pass["token_means"], strict=True):
        assert a[:-1] == b[:-1] and a[-1] == pytest.approx(b[-1], rel=1e-9, abs=1e-9)


def test_a_writer_killed_in_the_write_resumes_without_harvesting_again_and_does_not_grow(wide, corpus, one_pass,
                                                                                         tmp_path):
    db = tmp_path / "killed.duckdb"
    args = _args(wide, corpus, db, "--checkpoint-seconds", "0")

    def run(kill_at: int):
        env = {**os.environ, "KILL_AT_WRITE": str(kill_at)}
        return subprocess.run([sys.executable, "-m", "bench.kill_in_write", *args], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)

    sizes = []
    for _ in range(4):  # killed in the first layer's write, four times
        assert run(1).returncode == -signal.SIGKILL
        sizes.append(sum(os.path.getsize(p) for p in (db, db.with_name(db.name + ".wal")) if p.exists()))
    # no growth from try to try (the file and its log alternate as each open folds the log in)
    assert max(sizes[2:]) <= max(sizes[:2]), sizes
    assert run(2).returncode == -signal.SIGKILL  # the first layer is committed, then killed in the second's
    done = run(0)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1 layer already written" in done.stderr and "resumed from its checkpoint after" in done.stderr, done.stderr
    assert _tables(db) == one_pass
    assert not db.with_name(db.name + ".harvest").exists()
