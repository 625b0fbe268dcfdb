"""The scorers beside simulation through the real job and CLI: embedding (offline), detection and fuzzing over the
local OpenAI-compatible server, stored with intervals, resumed, and printed by ``score --json`` when stored."""

import json
import shutil

import numpy as np
import pytest
import scipy.stats

from analysis.__main__ import main
from analysis.splits import classification_examples, explainer_train, explainer_quantiles
from analysis.types import MLP, UnitId


@pytest.fixture(scope="module")
def scored_db(viewer_db, tmp_path_factory):
    db, model = viewer_db
    copy = tmp_path_factory.mktemp("scorers") / "s.duckdb"
    shutil.copy(db, copy)
    args = ["--db", str(copy), "--model", model, "--layer", "1"]
    assert main(["explain", *args, "--neurons", "0-7", "--explainer", "token-lookup", "--quiet"]) == 0
    return copy, model, args


def _rec(db, model, unit):
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        return s.records.unit_record(s.runs.find(model, 1), UnitId(MLP, 1, unit))


def _both_classes(db, model):
    return [u for u in range(8) if all(classification_examples(_rec(db, model, u)))]


def test_examples_are_held_out_and_labelled(scored_db):
    db, model, _args = scored_db
    for u in range(8):
        rec = _rec(db, model, u)
        act, non = classification_examples(rec)
        seen = {r.window_id for r in explainer_train(rec) + explainer_quantiles(rec)}
        assert not seen & {r.window_id for r in act + non}
        assert len({r.window_id for r in act + non}) == len(act + non)
        median = np.median([max(r.activations) for r in rec.random_sample])
        assert all(max(r.activations) >= rec.stats.max / 10 and max(r.activations) > median for r in act)
        assert all(max(r.activations) < rec.stats.max / 10 or max(r.activations) <= median for r in non)


def test_embedding_scores_equal_an_independent_auroc_and_resume(scored_db, capsys):
    from analysis.search import embed
    from cache.store import open_store

    db, model, args = scored_db
    units = _both_classes(db, model)
    assert units, "the tiny harvest has units with both classes"
    assert main(["score", *args, "--neurons", "0-7", "--scorer", "embedding", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)
    fresh = {r["explanation_id"]: r for r in out}
    assert len(fresh) >= 8 and all(not r.get("stored") for r in out)
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        for u in units:
            rec = _rec(db, model, u)
            act, non = classification_examples(rec)
            for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u)):
                got = fresh[e.explanation_id]
                # independent: encode the texts here, cosine, scipy's U
                vec = embed([e.text])[0]
                sims = embed(["".join(r.tokens) for r in act + non]) @ vec
                y = np.r_[np.ones(len(act), bool), np.zeros(len(non), bool)]
                u_stat = scipy.stats.mannwhitneyu(sims[y], sims[~y]).statistic
                assert got["score"] == pytest.approx(u_stat / (y.sum() * (~y).sum()), abs=0.02)
                assert got["lo"] <= got["score"] <= got["hi"]
                assert got["n_pos"] == len(act) and got["n_neg"] == len(non)
        n_windows = s.con.execute("SELECT count(*) FROM window_vectors").fetchone()[0]
    # every window encoded once, and a rerun scores nothing again but prints what is stored
    assert main(["score", *args, "--neurons", "0-7", "--scorer", "embedding", "--json", "--quiet"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert {r["explanation_id"] for r in again} == set(fresh) and all(r["stored"] for r in again)
    assert [r["score"] for r in sorted(again, key=lambda r: r["explanation_id"])] == \
        [fresh[k]["score"] for k in sorted(fresh)]
    with open_store(db, read_only=True) as s:
        assert s.con.execute("SELECT count(*) FROM window_vectors").fetchone()[0] == n_windows


def test_score_json_prints_stored_simulations(scored_db, capsys):
    db, model, args = scored_db
    assert main(["score", *args, "--neuron", "3", "--simulator", "token-lookup", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", *args, "--neuron", "3", "--simulator", "token-lookup", "--json", "--quiet"]) == 0
    out = json.loads(capsys.readouterr().out)  # today's scores, not [] (nothing was left to score)
    assert out["stored"] and out["unit"] and out["score"] is not None
    real = [v for r in out["records"] for v in r["real"]]
    sim = [v for r in out["records"] for v in r["simulated"]]
    assert out["score"] == pytest.approx(scipy.stats.pearsonr(real, sim).statistic, abs=1e-6)
    assert out["lo"] is not None and out["lo"] <= out["score"] <= out["hi"]


def test_a_unit_without_non_activating_examples_says_why(scored_db):
    import dataclasses

    from analysis.scorers.embedding import score_embedding
    from analysis.search import embed

    db, model, _args = scored_db
    rec = dataclasses.replace(_rec(db, model, 0), random_sample=[], random_sample_by_quantile=[])
    vectors = {r.window_id: v for r, v in zip(classification_examples(rec)[0],
                                              embed(["".join(r.tokens) for r in classification_examples(rec)[0]]))}
    r = score_embedding("commas", embed(["commas"])[0], rec, vectors)
    assert r.score is None and "no non-activating examples" in r.error
    assert score_embedding("  ", embed(["x"])[0], rec, vectors).error == "the explanation is empty"


def _keyword(explanation: str, text: str, fuzz: bool) -> int:
    """The test server's keyword rule (tests/openai_server.py), recomputed here."""
    import re

    seen = " ".join(re.findall(r"<<(.*?)>>", text)) if fuzz else text
    return int(any(w.lower() in seen.lower() for w in re.findall(r"[A-Za-z]{4,}", explanation)))


@pytest.mark.parametrize("scorer", ["detection", "fuzz"])
def test_judged_scorers_over_the_server(scored_db, server, scorer, capsys):
    from analysis.scorers import metrics as m

    db, model, args = scored_db
    api = ["--api-base-url", server, "--api-model", "keyword", "--api-retries", "0"]
    unit = _both_classes(db, model)[0]
    assert main(["score", *args, "--neurons", str(unit), "--scorer", scorer, "--explanation", "commas and Paris",
                 *api, "--json", "--quiet"]) == 0
    r = json.loads(capsys.readouterr().out)
    ex = r["examples"]
    assert {e["label"] for e in ex} == {0, 1} and r["usage"]["requests"] == -(-len(ex) // 5)  # batches of 5
    verdicts = [_keyword("commas and Paris", e["shown"], scorer == "fuzz") for e in ex]
    assert [e["verdict"] for e in ex] == verdicts
    labels = [e["label"] for e in ex]
    assert r["metrics"]["balanced_accuracy"]["value"] == pytest.approx(m.balanced_accuracy(verdicts, labels))
    assert r["metrics"]["auroc"]["value"] == pytest.approx(
        scipy.stats.mannwhitneyu([e["prediction"] for e in ex if e["label"]],
                                 [e["prediction"] for e in ex if not e["label"]]).statistic
        / (sum(labels) * (len(labels) - sum(labels))))
    if scorer == "fuzz":  # each activating example twice: marked right and marked wrong
        assert sum(labels) == len(classification_examples(_rec(db, model, unit))[0])


def test_judged_scorers_bad_endpoints(scored_db, server, capsys):
    db, model, args = scored_db
    unit = _both_classes(db, model)[0]
    base = ["score", *args, "--neurons", str(unit), "--scorer", "detection", "--api-base-url", server,
            "--api-retries", "0", "--json", "--quiet"]
    assert main([*base, "--explanation", "commas", "--api-model", "no-logprobs"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert "auroc" not in r["metrics"] and any("log-probabilities" in n for n in r["notes"]) and r["score"] is not None
    assert main([*base, "--explanation", "commas two", "--api-model", "partial"]) == 1  # every batch one answer short
    r = json.loads(capsys.readouterr().out)
    assert r["score"] is None and "answers for" in r["error"]
    assert main([*base, "--explanation", "commas three", "--api-model", "garbage"]) == 1
    assert "no JSON list" in json.loads(capsys.readouterr().out)["error"]
    # a budget stop: what is done is stored, the rest left for a rerun
    code = main([*base, "--explanation", "commas four", "--api-model", "keyword", "--api-max-requests", "1"])
    assert code != 0
    assert "API budget reached" in capsys.readouterr().err


def test_detection_answered_by_the_embedded_model(viewer_db, embedded_smollm2, tmp_path):
    """The protocol end to end with a real model answering (its P(yes) per excerpt as log-probabilities)."""
    from analysis.api import ApiClient, ApiConfig
    from analysis.scorers.detection import JudgeScorer
    from tests.openai_server import serve

    db, model = viewer_db
    rec = next(r for u in range(8) if all(classification_examples(r := _rec(db, model, u))))
    with serve(embedded_smollm2) as url:
        client = ApiClient(ApiConfig(base_url=url, model="smollm2"))
        r = JudgeScorer("detection", client, batch=8).score("commas in lists", rec)
    assert r.error is None and r.metrics["auroc"]["value"] is not None
    assert all(0 < e["prediction"] < 1 for e in r.examples)
    assert r.metrics["auroc"]["lo"] <= r.metrics["auroc"]["value"] <= r.metrics["auroc"]["hi"]


def test_explain_from_quantiles_is_its_own_explainer(scored_db):
    from analysis.explain import TokenLookupExplainer
    from cache.store import open_store

    db, model, args = scored_db
    assert main(["explain", *args, "--neurons", "0-1", "--explainer", "token-lookup", "--examples", "quantiles",
                 "--quiet"]) == 0
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        for u in (0, 1):
            rec = _rec(db, model, u)
            got = {e.explainer: e.text for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u))}
            assert set(got) >= {"token-lookup", "token-lookup+quantiles"}
            seen = explainer_quantiles(rec)
            assert got["token-lookup+quantiles"] == TokenLookupExplainer().explain(seen, rec.stats.max).text
            assert len(seen) == 5 and seen[:3] == explainer_train(rec)[:3]
    with pytest.raises(SystemExit):  # argparse's choices
        main(["explain", *args, "--neurons", "0-1", "--explainer", "token-lookup", "--examples", "bogus"])
