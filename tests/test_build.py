"""The build command: plan and budget arithmetic, and a whole build of a tiny model that resumes."""

from __future__ import annotations

import json

import pytest

from analysis.__main__ import main
from analysis.jobs.build import PROJECT_VM, BuildJob, parse_budget, plan, spread
from analysis.types import MLP, UnitId, UserError


def test_budget_and_spread():
    assert parse_budget("2h") == 7200 and parse_budget("90m") == 5400 and parse_budget("600") == 600
    assert parse_budget(None) is None
    with pytest.raises(UserError, match="--budget"):
        parse_budget("two hours")
    layers = list(range(30))
    assert spread(layers, 3) == [0, 14, 29] and spread(layers, 1) == [15] and spread(layers, 0) == []
    assert spread(layers, 40) == layers and len(spread(layers, 7)) == 7


def test_plan_keeps_the_cheap_lenses_and_spreads_the_rest():
    units = {lens: 1000 for lens in PROJECT_VM}
    costs = {"harvest": 0.0, "baselines": 0.01, "topics": 0.1, "n2g": 1.0}  # seconds per unit
    job = BuildJob(layers="all", lenses=("harvest", "baselines", "topics", "n2g"), budget="1h")
    stages, dropped = plan(job, 30, units, 10_000, costs, 3600)
    by = {s.lens: s for s in stages}
    cheap = 30 * 1000 * (0.01 + 0.1)  # 3,300 s: 300 s left = 0 full n2g layers of 1,000 s
    assert by["baselines"].layers == by["topics"].layers == list(range(30))
    assert by["n2g"].layers == [] and dropped["n2g"] == list(range(30)) and sum(s.seconds for s in stages) == cheap
    stages, dropped = plan(job, 30, units, 10_000, costs, cheap + 3 * 1000)
    assert {s.lens: s for s in stages}["n2g"].layers == [0, 14, 29] and len(dropped["n2g"]) == 27
    stages, dropped = plan(job, 30, units, 10_000, costs, None)
    assert not dropped and all(s.basis == "measured" for s in stages)
    with pytest.raises(UserError, match="cheap lenses .* alone need"):
        plan(job, 30, units, 10_000, costs, 60)
    with pytest.raises(UserError, match="--lenses"):
        plan(BuildJob(lenses=("harvest", "colour")), 30, units, 10_000, costs, None)


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
    costs = json.loads((tmp_path / "build.duckdb.costs.json").read_text())[f"{info.model_id}|cpu"]
    assert set(costs) == {"harvest", "baselines", "n2g"} and all(v > 0 for v in costs.values())
    # the second plan uses this machine's costs, and the rerun does nothing twice
    assert main(args[:-1]) == 0
    err = capsys.readouterr().err
    assert "(measured)" in err and "(VM)" not in err
    with open_store(db, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM explanations").fetchone()[0] == n_exp
        assert s.con.execute("SELECT count(*) FROM baselines").fetchone()[0] == n_base


def _contents(db) -> dict:
    """What a build stored, without timings and timestamps."""
    from cache.store import open_store

    queries = {
        "runs": "SELECT model_id, corpus_id, layers, n_windows, n_tokens, status FROM runs ORDER BY ALL",
        "stats": "SELECT layer, unit, n_tokens, mean, std, max, hist FROM unit_stats ORDER BY ALL",
        "samples": "SELECT layer, unit, kind, bin, rank, window_id FROM samples ORDER BY ALL",
        "explanations": "SELECT explanation_id, layer, unit, explainer, text FROM explanations ORDER BY ALL",
        "baselines": "SELECT layer, unit, predictor, scoring_set, window_ids, predicted, score FROM baselines "
                     "ORDER BY ALL",
        "graphs": "SELECT layer, unit, params, metrics, firing_f1, test_window_ids, n_patterns FROM n2g_graphs "
                  "ORDER BY ALL",
        "patterns": "SELECT * EXCLUDE (run_id) FROM n2g_patterns ORDER BY ALL",
    }
    with open_store(db, read_only=True) as s:
        return {k: s.con.execute(q).fetchall() for k, q in queries.items()}


def test_a_killed_build_resumes_to_the_same_results(tiny_folders, viewer_db, tmp_path):
    """SIGKILL in the middle of the build, rerun: every table as an uninterrupted build leaves it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["neox"])
    repo = Path(__file__).resolve().parents[1]

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
    a, b = _contents(whole), _contents(killed)
    assert all(a[k] for k in a) and a.keys() == b.keys()
    for k in a:
        assert a[k] == b[k], k
