"""Every scorer's verdict with its interval on the explanations tab, the glance card, the Compare page and the Scores
page (AppTest), on a harvest of the tiny GPT-2 whose explanations were scored by the real jobs."""

from __future__ import annotations

import html
import re
import shutil

import numpy as np
import pytest

from analysis.scorers import ScorerResult
from analysis.scorers.embedding import PARAMS as EMBEDDING
from analysis.types import MLP, Explanation, UnitId
from tests.helpers import open_page

EVIL = "<script>alert(1)</script>"


def _text(body: str) -> str:
    """What a reader sees of an HTML block: tags out, entities decoded."""
    return html.unescape(re.sub(r"<[^>]+>", "", re.sub(r"<style>.*?</style>", "", body, flags=re.S)))


def _table(at) -> str:
    [body] = [h.proto.body for h in at.html if 'class="scoretab"' in h.proto.body]
    return body


def _verdict(scorer: str, score: float, lo: float | None, hi: float | None, params: dict | None = None
             ) -> ScorerResult:
    metric = "auroc" if scorer == "embedding" else "balanced_accuracy"
    return ScorerResult(scorer, params or (EMBEDDING if scorer == "embedding" else {"model": "judge"}), score, lo, hi,
                        {metric: {"value": score, "lo": lo, "hi": hi}},
                        [{"window_id": 1, "label": 1, "prediction": 1.0, "verdict": 1},
                         {"window_id": 2, "label": 0, "prediction": 0.0, "verdict": 0}])


@pytest.fixture(scope="module")
def scored_db(viewer_db, tmp_path_factory, server):
    """A copy of viewer_db: layer 1 neurons 0-3 explained (token-lookup) and scored by simulation (api-json) and
    the embedding scorer with the real jobs, their token-lookup baselines; on neuron 0 an explanation that is
    HTML with a stored embedding verdict; on neuron 5 two explanations that the embedding and detection scorers
    rank oppositely (and a fuzz verdict stored without an interval)."""
    from analysis.__main__ import main
    from cache.store import open_store

    db, model = viewer_db
    copy = tmp_path_factory.mktemp("scores_view") / "scored.duckdb"
    shutil.copy(db, copy)
    args = ["--db", str(copy), "--model", model, "--layer", "1", "--neurons", "0-3", "--quiet"]
    assert main(["explain", *args, "--explainer", "token-lookup"]) == 0
    assert main(["score", *args, "--simulator", "token-lookup"]) == 0
    assert main(["score", *args, "--simulator", "api-json", "--api-base-url", server, "--api-model", "good",
                 "--api-retries", "0"]) == 0
    assert main(["score", *args, "--scorer", "embedding"]) == 0
    with open_store(copy) as s:
        run = s.runs.find(model, 1).run_id
        evil = s.explanations.put(run, UnitId(MLP, 1, 0), Explanation(EVIL, "human"))
        a = s.explanations.put(run, UnitId(MLP, 1, 5), Explanation("commas and periods", "human"))
        b = s.explanations.put(run, UnitId(MLP, 1, 5), Explanation("the word Paris", "human"))
        s.scorer_results.put([(evil, _verdict("embedding", 0.41, 0.22, 0.63)),
                              (a, _verdict("embedding", 0.91, 0.8, 0.97)), (b, _verdict("embedding", 0.35, 0.2, 0.5)),
                              (a, _verdict("detection", 0.3, 0.1, 0.5)), (b, _verdict("detection", 0.8, 0.6, 0.9)),
                              (a, _verdict("fuzz", 0.55, None, None))])
    return copy, model, run


def _stored(db, run, unit):
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        rows = s.explanations.with_simulations(run, unit)
        return rows, s.scorer_results.of_explanations([e.explanation_id for e, _s in rows]), \
            s.explanations.baselines(run, unit)


def _ci(score, lo, hi) -> str:
    return f"{score:.2f} [{lo:.2f}, {hi:.2f}]"


def test_explanations_tab_shows_every_score_with_its_interval(scored_db, monkeypatch):
    db, model, run = scored_db
    rows, verdicts, baselines = _stored(db, run, UnitId(MLP, 1, 0))
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=0, tab="explanations")
    assert not at.exception
    body = _table(at)
    seen = _text(body)
    sims = [s for _e, ss in rows for s in ss if s.score is not None]
    scores = [v for vs in verdicts.values() for v in vs]
    assert sims and all(s.lo is not None for s in sims) and len(scores) == 2  # token-lookup's and the HTML one's
    for x in sims + scores:
        assert _ci(x.score, x.lo, x.hi) in seen  # the stored interval, as stored
    [b] = [b for b in baselines if b.scoring_set == sims[0].scoring_set]
    assert "token-lookup baseline" in seen and _ci(b.score, b.lo, b.hi) in seen
    assert html.escape(EVIL) in body and EVIL not in body and EVIL in seen  # shown as text, never as markup
    assert "disagree" not in seen  # one column scored both explanations: nothing to disagree about
    assert "api-json · top-and-random" in seen and "embedding" in seen and "chance 0.5" in seen
    # the glance card: the best explanation's simulation score with its interval, its embedding AUROC beside it
    glance = next(h.proto.body for h in at.html if 'class="glance"' in h.proto.body)
    best = max(sims, key=lambda s: s.score)
    assert f"r = {_ci(best.score, best.lo, best.hi)}" in glance
    [emb] = [v for v in verdicts[best.explanation_id] if v.scorer == "embedding"]
    assert f"embedding AUROC {emb.score:.2f}" in _text(glance)


def test_disagreement_and_scores_stored_without_an_interval(scored_db, monkeypatch):
    db, model, _run = scored_db
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=5, tab="explanations")
    assert not at.exception
    seen = _text(_table(at))
    assert "0.55 no interval" in seen and "0.91 [0.80, 0.97]" in seen and "0.80 [0.60, 0.90]" in seen
    flag = seen.split("disagree about the best explanation:")[1]
    # (numbered by the unit's explanations: the shared session database may hold another one of this unit)
    assert re.search(r"embedding \(AUROC\): #\d+ commas and periods", flag)
    assert re.search(r"detection \(bal\. acc\.\): #\d+ the word Paris", flag)
    assert "fuzz" not in flag  # it scored one of them


def test_compare_shows_both_units_scores(scored_db, monkeypatch):
    db, model, run = scored_db
    at = open_page("compare", db, monkeypatch, a_model=model, a_layer=1, a_neuron=1, b_model=model, b_layer=1,
                   b_neuron=2)
    assert not at.exception
    tables = [h.proto.body for h in at.html if 'class="scoretab"' in h.proto.body]
    assert len(tables) == 2
    for body, n in zip(tables, (1, 2)):
        rows, verdicts, baselines = _stored(db, run, UnitId(MLP, 1, n))
        for x in [s for _e, ss in rows for s in ss] + [v for vs in verdicts.values() for v in vs] + baselines:
            assert _ci(x.score, x.lo, x.hi) in _text(body)
    assert len([m for m in at.metric if m.label == "correlation score"]) == 2


def test_scores_page_means_intervals_and_disagreements(scored_db, monkeypatch):
    from cache.store import open_store
    from viewer.components.score_table import disagreement, grid, side

    db, model, _run = scored_db
    at = open_page("scores", db, monkeypatch)
    assert not at.exception
    table = next(d.value for d in at.dataframe if "explainer" in d.value.columns and "95 % lo" in d.value.columns)
    with open_store(db, read_only=True) as s:
        got = s.con.execute(
            "SELECT v.score FROM scorer_results v JOIN explanations e USING (explanation_id) WHERE v.scorer = "
            "'embedding' AND e.explainer = 'token-lookup' AND e.source = 'mlp' AND v.score IS NOT NULL").fetchall()
        units = s.con.execute("SELECT DISTINCT run_id, layer, unit FROM explanations WHERE source = 'mlp'").fetchall()
        expected = []  # the Scores page's count, from the explanations tab's own rule, unit by unit
        for run, layer, unit in units:
            rows = s.explanations.with_simulations(run, UnitId(MLP, layer, unit))
            columns, cells = grid(rows, s.scorer_results.of_explanations([e.explanation_id for e, _s in rows]))
            for name in ("input", "output"):
                eids = [e.explanation_id for e, _s in rows if side(e.explainer) == name]
                expected.append(disagreement(eids, columns, cells) is not None)
    v = np.array([g[0] for g in got])
    [row] = table[(table["scorer"] == "embedding") & (table["explainer"] == "token-lookup")].to_dict("records")
    half = 1.96 * v.std(ddof=1) / np.sqrt(len(v))
    assert row["n"] == len(v) and row["mean"] == pytest.approx(v.mean())
    assert row["95 % lo"] == pytest.approx(max(v.mean() - half, 0))  # (an AUROC's range: [0, 1])
    assert row["95 % hi"] == pytest.approx(min(v.mean() + half, 1))
    assert row["chance"] == 0.5
    fig = __import__("json").loads(next(c for c in at.get("plotly_chart") if "chance" in c.proto.spec).proto.spec)
    assert any(a.get("text") == "chance 0.5" for a in fig["layout"]["annotations"])
    assert any("mean ± 1.96·sd/√n computed in SQL" in c.value for c in at.caption)
    [line] = [m.value for m in at.markdown if "disagree about which explanation" in m.value]
    assert sum(expected) >= 1 and line.startswith(f"**{sum(expected)} of ") and "L1/N5" in line


def test_your_own_explanation_is_scored_by_the_embedding_scorer_live(scored_db, monkeypatch):
    """The box scores a typed explanation with the offline embedding scorer too, vectors in memory: nothing is
    written (the same verdict as the stored scorer's, from the same vectors)."""
    from analysis.scorers.embedding import examples_of, score_embedding
    from analysis.search import ENCODER, embed
    from cache.store import open_store

    db, model, run = scored_db
    with open_store(db, read_only=True) as s:
        before = s.scorer_results.count(), s.con.execute("SELECT count(*) FROM window_vectors").fetchone()[0]
        rec = s.records.unit_record(s.runs.find(model, 1), UnitId(MLP, 1, 3))
        windows = s.scorer_results.window_vectors(run, ENCODER, [r.window_id for r, _y in examples_of(rec)])
    want = score_embedding("the tokens Paris and France", embed(["the tokens Paris and France"])[0], rec, windows)
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=3, tab="explanations")
    at.text_input(key="own_text").set_value("the tokens Paris and France")
    at.button[[b.label for b in at.button].index("simulate and score")].click().run()
    assert not at.exception
    [m] = [m for m in at.metric if m.label == "embedding AUROC"]
    assert m.value == _ci(want.score, want.lo, want.hi)
    assert re.fullmatch(r"-?\d\.\d\d (\[-?\d\.\d\d, -?\d\.\d\d\]|\(no interval\))",
                        next(m.value for m in at.metric if m.label == "correlation score"))
    with open_store(db, read_only=True) as s:
        assert (s.scorer_results.count(), s.con.execute("SELECT count(*) FROM window_vectors").fetchone()[0]) == before
