"""Neuron2Graph through the CLI on a real harvest: JSON that recomputes, resume after an interruption, extra train
records from a larger top-k, the graphs stored as a simulator."""

from __future__ import annotations

import numpy as np
import pytest

from analysis.types import MLP, UnitId


def test_cli_n2g_json_recomputes_resumes_and_scores(n2g_db, capsys):
    """The --json records let anyone recompute the metrics; held-out windows are never train windows; a second
    run resumes (builds nothing); each graph is stored as the 'n2g' simulator beside the explanations."""
    from analysis.__main__ import main
    from analysis.splits import scoring_records
    from cache.store import open_store

    db, model = n2g_db
    capsys.readouterr()
    assert main(["n2g", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-11", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "0 graph(s) built, 12 already in the cache" in err
    import json

    neurons = json.loads(out)["neurons"]
    assert [n["neuron"] for n in neurons] == list(range(12))
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        for n in neurons:
            rec = s.records.unit_record(run, UnitId(MLP, 1, n["neuron"]))
            top = [r.window_id for r in rec.most_positive_activation_records]
            head = top[:20]  # the default harvest keeps 30: those past the first 20 train only
            held = [r["window_id"] for r in n["records"]]
            assert len(top) == 30 and held == head[2::4] + head[3::4]
            assert not set(held) & set(head[0::4] + head[1::4] + top[20:])
            real = np.concatenate([r["real"] for r in n["records"]])
            pred = np.concatenate([r["predicted"] for r in n["records"]])
            thr = 0.5 * n["max_activation"]
            tp, fp, fn = np.sum((real >= thr) & (pred >= thr)), np.sum((real < thr) & (pred >= thr)), \
                np.sum((real >= thr) & (pred < thr))
            p = tp / (tp + fp) if tp + fp else 0.0
            r_ = tp / (tp + fn) if tp + fn else 0.0
            assert n["firing"]["precision"] == pytest.approx(p) and n["firing"]["recall"] == pytest.approx(r_)
            g = s.graphs.get(run.run_id, UnitId(MLP, 1, n["neuron"]))
            assert g is not None and len(g.patterns) == n["n_patterns"]
            [exp] = [e for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, n["neuron"])) if e.explainer == "n2g"]
            [sim] = s.explanations.simulations(exp.explanation_id)
            assert sim.simulator == "n2g" and sim.error is None
            assert sim.window_ids == [r.window_id for r in scoring_records(rec, "top-and-random")]
            assert not set(sim.window_ids) & set(top[0::4] + top[1::4])  # scored on records the graph never saw
    # scoring the stored explanations with a text simulator leaves the graph summaries alone
    capsys.readouterr()
    assert main(["score", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-11",
                 "--simulator", "token-lookup", "--json"]) == 0
    assert "Neuron2Graph" not in capsys.readouterr().out
    assert main(["n2g", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "99999"]) == 2
    assert "neurons go from 0" in capsys.readouterr().err


def test_cli_n2g_interrupted_then_resumed(viewer_db, tmp_path, monkeypatch, capsys):
    """Ctrl-C during the second chunk keeps the first; the next run builds only the rest."""
    import shutil

    import analysis.n2g.pipeline as pipeline
    from analysis.__main__ import main
    from cache.store import open_store

    db = tmp_path / "cut.duckdb"
    shutil.copy(viewer_db[0], db)
    model = viewer_db[1]
    real_fit_layer = pipeline.fit_layer

    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C while the second chunk is being fitted
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        yield from real_fit_layer(*args, **kwargs)

    monkeypatch.setattr(pipeline, "fit_layer", interrupted)
    args = ["n2g", "--db", str(db), "--model", model, "--layer", "0", "--neurons", "0-5", "--chunk", "2", "--quiet"]
    assert main(args) == 130
    with open_store(db, read_only=True) as s:
        assert s.graphs.units(s.runs.find(model, 0).run_id, 0) == {0, 1}
    monkeypatch.setattr(pipeline, "fit_layer", real_fit_layer)
    capsys.readouterr()
    assert main(args) == 0
    assert "4 graph(s) built, 2 already in the cache" in capsys.readouterr().err


def test_cli_n2g_extra_records_from_a_larger_top_k(viewer_db, tmp_path, capsys):
    """A harvest with top-k 26 gives Neuron2Graph 6 extra train records: the held-out records stay the first 20's
    2::4 + 3::4, and the token-lookup baseline beside the graph is the one fitted on train + extra (recomputed
    here by hand). A top-20 harvest has none to give: the graphs are fitted without, and the job says so; a build
    asked for another top-k than its database's harvest kept says it uses that harvest."""
    import json

    from analysis.__main__ import main
    from analysis.n2g.evaluate import firing_metrics
    from cache.store import open_store

    db0, model = viewer_db
    corpus = str(db0.parent / "docs.jsonl")
    db20 = tmp_path / "k20.duckdb"
    assert main(["harvest", "--model", model, "--corpus", corpus, "--db", str(db20),
                 "--layers", "1", "--seq-len", "8", "--top-k", "20", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["n2g", "--db", str(db20), "--model", model, "--layer", "1", "--neurons", "0", "--json"]) == 0
    out = capsys.readouterr()
    assert "no extra train records: this harvest kept 20 top records per unit" in out.err
    assert len(json.loads(out.out)["neurons"][0]["records"]) == 10
    build = ["build", "--db", str(db20), "--model", model, "--corpus", corpus, "--layers", "1", "--lenses", "n2g",
             "--plan-only"]
    assert main(build) == 0
    assert "harvest kept 20 top records per unit (not --top-k 30): it is used as it is" in capsys.readouterr().err
    assert main(build + ["--top-k", "20"]) == 0
    assert "harvest kept" not in capsys.readouterr().err
    db = tmp_path / "k26.duckdb"
    assert main(["harvest", "--model", model, "--corpus", corpus, "--db", str(db),
                 "--layers", "1", "--seq-len", "8", "--top-k", "26", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["n2g", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-3", "--extra-records", "6",
                 "--json", "--quiet"]) == 0
    neurons = json.loads(capsys.readouterr().out)["neurons"]
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        for n in neurons:
            rec = s.records.unit_record(run, UnitId(MLP, 1, n["neuron"]))
            top = rec.most_positive_activation_records
            assert len(top) == 26
            head = top[:20]
            assert [r["window_id"] for r in n["records"]] == [r.window_id for r in head[2::4] + head[3::4]]
            best: dict = {}
            for r in head[0::4] + head[1::4] + top[20:]:
                for t, a in zip(r.token_ids, r.activations):
                    best[t] = max(best.get(t, a), a)
            held = head[2::4] + head[3::4]
            lookup, _ = firing_metrics([list(r.activations) for r in held],
                                       [[max(best.get(t, 0.0), 0.0) for t in r.token_ids] for r in held], rec.stats.max)
            assert n["baseline_firing"] == pytest.approx({"precision": lookup.precision, "recall": lookup.recall,
                                                          "f1": lookup.f1})
            assert s.graphs.get(run.run_id, UnitId(MLP, 1, n["neuron"])).params["extra_records"] == 6
    # one build command with the defaults: its harvest keeps 30, its graphs fit the 10 past the first 20
    built = tmp_path / "built.duckdb"
    assert main(["build", "--db", str(built), "--model", model, "--corpus", corpus,
                 "--layers", "1", "--lenses", "harvest,n2g", "--expensive-neurons", "0-1", "--quiet"]) == 0
    with open_store(built, read_only=True) as s:
        run = s.runs.find(model, 1)
        assert run.params["top_k"] == 30
        assert len(s.records.unit_record(run, UnitId(MLP, 1, 0)).most_positive_activation_records) == 30
        assert s.graphs.get(run.run_id, UnitId(MLP, 1, 0)).params["extra_records"] == 10
