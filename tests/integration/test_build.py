"""The build command: its status file, and a whole build of a tiny model that resumes."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from analysis.__main__ import main
from analysis.jobs.build.status import read_status
from analysis.types import MLP, UnitId
from tests.helpers import build_contents


def test_build_status_of_a_running_and_a_dead_build(tmp_path):
    import subprocess
    import sys

    from analysis.jobs.build.plan import Stage
    from analysis.jobs.build.status import BuildStatus, read_status, status_file, StatusProgress
    from analysis.progress import Progress

    db = tmp_path / "x.duckdb"
    assert read_status(db) is None
    stages = [Stage("harvest", [0, 1], 500, 0.0, "done"), Stage("baselines", [0, 1], 64, 100.0, "VM"),
              Stage("n2g", [1], 4, 300.0, "VM")]
    status = BuildStatus.start(stages, "python -m analysis build --db x.duckdb", [0, 1, 2, 3])
    assert status.stages[0].done == [0, 1] and status.running and status.fraction == 0.0
    status.stages[1].done.append(0)
    status.current, status.step = (1, 1), ("token-lookup L1", 8, 32)
    shown = StatusProgress(Progress(enabled=False), status, status_file(db))
    shown.save()
    back = read_status(db)
    assert back == status and back.where() == "baselines L1 (token-lookup L1: 8/32)"
    assert back.fraction == pytest.approx((50 + 50 * 8 / 32) / 400)
    assert back.pending("baselines", 1, 900) and not back.pending("baselines", 0, 0)  # cheap: every unit
    assert back.pending("n2g", 1, 3) and not back.pending("n2g", 1, 4) and not back.pending("n2g", 0, 3)
    # a stage's bar reports its count into the status file (here: its first report, then the throttled ones)
    bar = shown.bar(10, "graphs L1")
    bar.update(3)
    assert read_status(db).step == ("graphs L1", 0, 10)
    shown.saved = 0.0
    bar.update(1)
    assert read_status(db).step == ("graphs L1", 4, 10)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    status.pid = dead.pid
    shown.save()
    gone = read_status(db)
    assert not gone.running and not gone.pending("n2g", 1, 3)
    status_file(db).write_text("{not json")
    assert read_status(db) is None


def test_build_a_tiny_model_then_resume(tiny_folders, viewer_db, tmp_path, capsys):
    from cache.store import open_store

    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["llama"])
    db = tmp_path / "build.duckdb"
    args = ["build", "--db", str(db), "--model", model, "--corpus", str(corpus), "--layers", "0-1",
            "--lenses", "harvest,baselines,n2g", "--quiet"]
    assert main([*args, "--plan-only"]) == 0
    err = capsys.readouterr().err
    assert "plan (seconds per unit" in err and "n2g       layers 0,1" in err and "(VM)" in err
    assert re.search(r"total ≈ \d+ (s|min), ≈ \d+ [kMG]B of database", err)  # disk: the demo build's bytes per unit
    assert not db.exists()  # a plan writes nothing
    assert main([*args, "--budget", "1s"]) == 2
    assert "alone need" in capsys.readouterr().err
    assert main(args) == 0
    capsys.readouterr()
    with open_store(db, read_only=True) as s:
        info = s.catalog.model(model)
        for layer in (0, 1):
            run = s.runs.find(model, layer)
            units = [UnitId(MLP, layer, i) for i in range(info.d_mlp)]
            assert all(s.explanations.has_baseline(run.run_id, u, "token-lookup", "top-and-random") for u in units)
            assert all(any(e.explainer == "token-lookup" for e in s.explanations.of_unit(run.run_id, u)) for u in units)
            assert s.graphs.units(run.run_id, layer) == set(range(info.d_mlp))
        n_exp = s.con.execute("SELECT count(*) FROM explanations").fetchone()[0]
        n_base = s.con.execute("SELECT count(*) FROM baselines").fetchone()[0]
    measured = json.loads((tmp_path / "build.duckdb.costs.json").read_text())
    costs, disk = measured[f"{info.model_id}|cpu"], measured[f"{info.model_id}|disk"]
    assert set(costs) == set(disk) == {"harvest", "baselines", "n2g"} and all(v > 0 for v in costs.values())
    assert disk["harvest"] > 0 and all(v >= 0 for v in disk.values())
    status = read_status(db)
    assert status.finished and not status.running and status.error is None and status.current is None
    assert [(s.lens, sorted(s.done)) for s in status.stages] == [("harvest", [0, 1]), ("baselines", [0, 1]),
                                                                 ("n2g", [0, 1])]
    # the second plan uses this machine's costs, and the rerun (the status's command) does nothing twice
    again = shlex.split(status.command)
    assert again[:4] == ["python", "-m", "analysis", "build"] and "--lenses" in again and "--plan-only" not in again
    assert main(again[3:]) == 0
    err = capsys.readouterr().err
    assert "(measured)" in err and "(VM)" not in err
    with open_store(db, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM explanations").fetchone()[0] == n_exp
        assert s.con.execute("SELECT count(*) FROM baselines").fetchone()[0] == n_base


def test_a_one_time_cost_stays_out_of_the_measured_cost_per_unit(tiny_folders, viewer_db, tmp_path, monkeypatch):
    """A stage that spends most of its time on one-time work (the topics' statistics) records only the rest as its
    seconds per unit: the next plan must not multiply a one-off by every unit of the model."""
    import time

    from analysis.jobs.build import run as build_run

    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["llama"])
    db = tmp_path / "once.duckdb"
    units = [16]

    def topics_stage(run, layer, layers):
        time.sleep(0.5)  # 0.4 s of one-time work, then 0.1 s for the layer's units
        return units[0], 0.4

    monkeypatch.setitem(build_run.STAGES, "topics", topics_stage)
    args = ["build", "--db", str(db), "--model", model, "--corpus", str(corpus), "--layers", "0", "--lenses",
            "harvest,topics", "--quiet"]
    assert main(args) == 0
    costs = json.loads((tmp_path / "once.duckdb.costs.json").read_text())
    # 16 topic units are too few to say what a whole layer costs per unit: nothing recorded (the plan keeps the VM's)
    assert "topics" not in next(v for k, v in costs.items() if k.endswith("|cpu"))
    units[0] = 512
    assert main(args) == 0
    costs = json.loads((tmp_path / "once.duckdb.costs.json").read_text())
    per_unit = next(v for k, v in costs.items() if k.endswith("|cpu"))["topics"]
    assert 0.09 / 512 < per_unit < 0.25 / 512  # the 0.1 s of work per 512 units, not 0.5 s


def test_a_killed_build_resumes_to_the_same_results(tiny_folders, viewer_db, tmp_path):
    """SIGKILL in the middle of the build, rerun: every table as an uninterrupted build leaves it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from tests.helpers import REPO as repo

    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["neox"])

    def args(db):
        return [sys.executable, "-m", "analysis", "build", "--db", str(db), "--model", model, "--corpus", str(corpus),
                "--layers", "all", "--lenses", "harvest,baselines,n2g", "--quiet"]

    whole = tmp_path / "whole.duckdb"
    assert subprocess.run(args(whole), cwd=repo, capture_output=True).returncode == 0
    killed = tmp_path / "killed.duckdb"
    proc = subprocess.Popen(args(killed), cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    costs = Path(str(killed) + ".costs.json")
    deadline = time.monotonic() + 120
    while not (costs.exists() and "baselines" in costs.read_text()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # into the next layer's baselines or the graphs
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert subprocess.run(args(killed), cwd=repo, capture_output=True).returncode == 0
    a, b = build_contents(whole), build_contents(killed)
    assert all(a[k] for k in a) and a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
