"""Explain -> simulate -> score: simulators against independent computations, a planted neuron, the CLI."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import json
from dataclasses import dataclass

import numpy as np
import pytest
import scipy.stats
import torch

from analysis.__main__ import main
from analysis.evaluate import score_simulation
from analysis.models import load_model
from analysis.prompts import explain_prompt, format_tokens
from analysis.scoring import correlation_score
from analysis.simulate import LocalAllAtOnceSimulator, TokenLookupSimulator, parse_activation_list
from analysis.splits import explainer_train, scoring_records


@dataclass
class Rec:
    tokens: list[str]
    token_ids: list[int]
    activations: list[float]
    window_id: int = 0


def test_local_simulator_equals_plain_forward_expectation(tiny_folders):
    """Batched, padded, lm_head restricted to the value rows == the full model run on each prompt alone."""
    subject = load_model(str(tiny_folders["llama"]))
    sim = LocalAllAtOnceSimulator(subject, batch_size=3)
    rng = np.random.default_rng(0)
    recs = [Rec(["x"] * n, [int(t) for t in rng.integers(40, 250, size=n)], [0.0] * n) for n in (5, 9, 3, 7)]
    got = sim.simulate("some explanation", recs).simulated
    values = np.array(sim.values) * sim.scale
    for r, g in zip(recs, got):
        ids, slots = sim._prompt("some explanation", r)
        for k, s in enumerate(slots):  # the slot is the TAB right after the record's token, before 'unknown'
            assert ids[s - 1] == r.token_ids[k] and ids[s + 1: s + 1 + len(sim.unknown)] == sim.unknown
        with torch.no_grad():
            logits = subject.model(input_ids=torch.tensor([ids])).logits[0].double()
        p = torch.softmax(logits[slots][:, sim.value_ids], dim=-1).numpy()
        np.testing.assert_allclose(g, p @ values, rtol=1e-4, atol=1e-4)


def test_token_lookup_recovers_a_planted_token_neuron():
    table = {7: 4.0, 9: 1.0}
    recs = [Rec(list("abcd"), [7, 1, 9, 7], [4.0, 0.0, 1.0, 4.0]), Rec(list("ab"), [2, 9], [0.0, 1.0])]
    sim = TokenLookupSimulator(table, default=0.0, max_activation=4.0)
    scored = score_simulation(sim, "anything", recs, 4.0, "top-and-random")
    assert scored.score == pytest.approx(1.0) and scored.rsquared == pytest.approx(1.0)
    assert scored.simulated[0] == [10.0, 0.0, 2.5, 10.0]


def test_prompt_format():
    recs = [Rec([" Paris", " is"], [1, 2], [2.0, 0.0])]
    text = explain_prompt(recs, 2.0)
    assert text.startswith("We're studying neurons")
    assert " Paris\t10\n is\t0\n<end>" in text
    assert text.endswith("the main thing this neuron does is find")
    assert format_tokens(["a", "b"], None) == "<start>\na\tunknown\nb\tunknown\n<end>\n"


@pytest.mark.parametrize("reply, ok", [
    ("[0, 3, 10]", True), ('Sure! {"activations": [0, 3, 10]}', True), ("```json\n[0,3,10]\n```", True),
    ("[0, 3]", False), ("no numbers here", False), ("[0, 'x', 1]", False), ("[0, 3, 10", False),
])
def test_api_reply_parsing(reply, ok):
    values, reason = parse_activation_list(reply, 3)
    assert (values is not None) == ok
    if ok:
        assert values == [0.0, 3.0, 10.0]
    else:
        assert reason


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


def test_degenerate_explanations_are_flagged():
    from analysis.prompts import FEW_SHOT, degenerate_reason

    assert degenerate_reason("") == degenerate_reason("  .  ") == "empty"
    for ex in FEW_SHOT:  # verbatim, reordered, re-cased, with a word dropped
        words = ex.explanation.replace("'", "").split()
        for text in (ex.explanation, " ".join(reversed(words)).upper() + ".", " ".join(words[:-1] + words[-1:])):
            assert degenerate_reason(text).startswith("copies a few-shot explanation"), text
    for text in ("the main thing this neuron does is find", "neurons in a neural network",
                 "Explanation of neuron 3 behavior"):
        assert degenerate_reason(text) == "restates the prompt", text
    for text in ("years and dates", "water", "the tokens ' Paris' and ' France'", "rivers in Africa and their deltas",
                 "closing brackets after a neuron name"):
        assert degenerate_reason(text) is None, text


def test_flagged_explanations_are_shown_not_chosen(viewer_db, tmp_path, monkeypatch):
    """A copied few-shot explanation stays in the table with its flag, but the glance's best is another one."""
    import shutil

    from analysis.evaluate import ScoredSimulation
    from analysis.explain import HumanExplainer
    from cache.store import open_store
    from test_viewer import _page

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
    at = _page("neuron", db, monkeypatch, model=model, layer=1, neuron=10, tab="explanations")
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
