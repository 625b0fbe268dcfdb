"""Explain -> simulate -> score for real: the embedded model's simulator on a planted neuron, the CLI's JSON that
recomputes, flagged explanations on the page, calibrated scores."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import json

import pytest
import scipy.stats

from analysis.__main__ import main
from analysis.scoring import correlation_score
from analysis.simulate import LocalAllAtOnceSimulator
from analysis.splits import explainer_train, scoring_records
from tests.helpers import Rec, open_page


def test_planted_neuron_on_the_embedded_simulator(embedded_smollm2):
    """A neuron that fires on animal names: the right explanation must beat wrong ones with SmolLM2-135M as the
    simulator. Measured margins are small (0.29 vs 0.23-0.25): a 135M model is a weak simulator."""
    tok = embedded_smollm2.tokenizer
    animals = {" dog", " cat", " horse", " cow", " sheep", " fox", " lion", " birds", " goat", " rabbit"}
    texts = ["The farmer kept a dog, a cat and a horse in the old barn near the road.",
             "A fox ran across the field while the sheep and the cow watched from the hill.",
             "In the zoo, the lion slept and the birds sang above the rabbit cage.",
             "He sold the goat at the market and bought bread, cheese and a new coat."]
    recs = []
    for t in texts:
        ids = tok(t, add_special_tokens=False).input_ids
        toks = tok.batch_decode([[i] for i in ids])
        recs.append(Rec(toks, ids, [10.0 if x in animals else 0.0 for x in toks]))
    sim = LocalAllAtOnceSimulator(embedded_smollm2)
    real = [r.activations for r in recs]
    right = correlation_score(real, sim.simulate("names of animals", recs).simulated)
    wrong = [correlation_score(real, sim.simulate(e, recs).simulated)
             for e in ("punctuation marks like commas and periods", "years and dates", "the article 'the'")]
    assert right > max(wrong), (right, wrong)


def test_cli_explain_and_score_json_recomputes(viewer_db, capsys):
    db, model = viewer_db
    args = ["--db", str(db), "--model", model, "--layer", "1"]
    assert main(["explain", *args, "--neurons", "0-3", "--explainer", "token-lookup", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["explain", *args, "--neurons", "0-3", "--explainer", "token-lookup", "--quiet"]) == 0
    assert "explained 0 neuron(s)" in capsys.readouterr().err  # resumable: nothing left to do
    assert main(["score", *args, "--neuron", "2", "--simulator", "token-lookup", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) >= {"explanation", "simulator", "set", "score", "rsquared", "absolute_dev_explained", "records"}
    real = [v for r in out["records"] for v in r["real"]]
    sim = [v for r in out["records"] for v in r["simulated"]]
    assert out["score"] == pytest.approx(scipy.stats.pearsonr(real, sim).statistic, abs=1e-9)
    assert len(out["records"]) == 10 and all(len(r["tokens"]) == len(r["real"]) for r in out["records"])
    # the held-out records were not shown to the explainer
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        rec = s.records.unit_record(s.runs.find(model, 1), UnitId(MLP, 1, 2))
    seen = {r.window_id for r in explainer_train(rec)}
    assert not seen & {r["window_id"] for r in out["records"]}
    assert {r.window_id for r in scoring_records(rec, "random-only")}.isdisjoint(seen)


def test_flagged_explanations_are_shown_not_chosen(viewer_db, tmp_path, monkeypatch):
    """A copied few-shot explanation stays in the table with its flag, but the glance's best is another one."""
    import shutil

    from analysis.evaluate import ScoredSimulation
    from analysis.explain import HumanExplainer
    from cache.store import open_store

    src, model = viewer_db
    db = tmp_path / "flags.duckdb"
    shutil.copy(src, db)
    with open_store(db) as s:
        rec = s.records.unit_record(s.runs.find(model, 1), UnitId(MLP, 1, 10))
        r = rec.random_sample[0]
        for text, score in (("words about water and rivers", 0.9), ("tokens near brackets", 0.2)):
            eid = s.explanations.put(rec.run_id, rec.unit, HumanExplainer(text).explain([], 0.0))
            s.explanations.put_simulation(eid, ScoredSimulation(  # a stored scored simulation, as a job writes it
                text, "api-json", {}, "top-and-random", [r.window_id], [r.tokens], [r.activations],
                [[0.0] * len(r.tokens)], score, 0.0, 0.0, rec.stats.max))
        best = s.explanations.best(rec.run_id, rec.unit)
    assert best[0].text == "tokens near brackets"  # the higher-scored copy of a few-shot explanation is not chosen
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=10, tab="explanations")
    assert not at.exception
    table = at.dataframe[0].value
    flags = dict(zip(table["explanation"], table["flag"]))
    assert flags["words about water and rivers"].startswith("copies a few-shot") and flags["tokens near brackets"] == ""


def test_calibrated_scores_match_an_independent_least_squares_fit(viewer_db, tmp_path, capsys):
    """The calibrated simulator: a least-squares line on the calibration records (disjoint from the scored ones),
    recomputed with numpy from the JSON alone (token-lookup here: its predictions vary from token to token)."""
    import shutil

    import numpy as np

    from analysis.__main__ import main

    src, model = viewer_db
    db = tmp_path / "cal.duckdb"
    shutil.copy(src, db)
    args = ["--db", str(db), "--model", model, "--layer", "1", "--neuron", "4", "--simulator", "token-lookup",
            "--json", "--force"]
    assert main(["score", *args]) == 0
    out = json.loads(capsys.readouterr().out)
    assert main(["score", *args, "--no-calibration"]) == 0
    assert json.loads(capsys.readouterr().out)["calibration"] is None
    cal = out["calibration"]
    x = np.array([v for r in cal["records"] for v in r["simulated"]])
    y = np.array([v for r in cal["records"] for v in r["real"]])
    slope, intercept = np.polyfit(x, y, 1)
    assert cal["slope"] == pytest.approx(slope, abs=1e-9) and cal["intercept"] == pytest.approx(intercept, abs=1e-9)
    real = np.array([v for r in out["records"] for v in r["real"]])
    fitted = slope * np.array([v for r in out["records"] for v in r["simulated"]]) + intercept
    assert cal["rsquared"] == pytest.approx(1 - np.mean((real - fitted) ** 2) / np.mean(real ** 2), abs=1e-9)
    assert cal["absolute_dev_explained"] == pytest.approx(1 - np.mean(np.abs(real - fitted)) / np.mean(np.abs(real)),
                                                          abs=1e-9)
    scored = {r["window_id"] for r in out["records"]}
    assert scored.isdisjoint(r["window_id"] for r in cal["records"])  # calibration records are not scored ones
    assert cal["n_tokens"] == x.size > 0
