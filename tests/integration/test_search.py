"""Finding units by their explanations: BM25 keyword ranking and sentence-vector similarity, on a planted set."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections import Counter

import numpy as np
import pytest

from analysis.__main__ import main
from analysis.types import MLP, Explanation, UnitId

PLANTED = {
    0: "rivers, lakes and other bodies of fresh water",
    1: "water flowing in streams and rivers",
    2: "years and dates in the twentieth century",
    3: "the capital city of France, Paris",
    4: "HTML tags and other markup",
    5: "numbers written as digits",
    6: "closing parentheses and brackets",
    7: "the ocean, the sea and waves",
}


@pytest.fixture(scope="module")
def planted(viewer_db, tmp_path_factory):
    from cache.store import open_store

    src, model = viewer_db
    db = tmp_path_factory.mktemp("search") / "search.duckdb"
    shutil.copy(src, db)
    import duckdb

    con = duckdb.connect(str(db))  # only the planted explanations (other tests add theirs to viewer_db)
    con.execute("DELETE FROM simulations; DELETE FROM explanations; DELETE FROM explanation_vectors")
    con.close()
    with open_store(db) as s:
        run = s.runs.find(model, 1)
        for u, text in PLANTED.items():
            s.explanations.put(run.run_id, UnitId(MLP, 1, u), Explanation(text, "human"))
    return db, model


def _bm25_by_hand(docs: list[str], query: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    """Okapi BM25 as Lucene computes it: idf ln(1 + (N − df + 0.5) / (df + 0.5)) times tf / (tf + k1 (1 − b + b
    |d| / avgdl)) (without the constant factor k1 + 1, which does not change the order), on lower-cased words of
    2+ letters without English stop words."""
    import bm25s.stopwords

    stop = set(bm25s.stopwords.STOPWORDS_EN)
    words = [[w for w in re.findall(r"(?u)\b\w\w+\b", d.lower()) if w not in stop] for d in docs]
    avg = sum(map(len, words)) / len(words)
    df = Counter(w for ws in words for w in set(ws))
    out = []
    for ws in words:
        tf = Counter(ws)
        out.append(sum(math.log(1 + (len(docs) - df[q] + 0.5) / (df[q] + 0.5)) * tf[q]
                       / (tf[q] + k1 * (1 - b + b * len(ws) / avg))
                       for q in re.findall(r"(?u)\b\w\w+\b", query.lower()) if q not in stop and q in df))
    return out


def test_keyword_search_ranks_as_bm25(planted, capsys):
    db, model = planted
    for query in ("rivers", "water rivers", "the capital of France", "brackets"):
        assert main(["search", query, "--db", str(db), "--model", model, "--json"]) == 0
        hits = json.loads(capsys.readouterr().out)
        expected = _bm25_by_hand(list(PLANTED.values()), query)
        want = sorted((u for u in PLANTED if expected[u] > 0), key=lambda u: -expected[u])
        assert [h["unit"]["index"] for h in hits] == want, query
        assert [h["match"] for h in hits] == pytest.approx([expected[u] for u in want], rel=1e-4)
    assert main(["search", "the and of", "--db", str(db), "--model", model, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # stop words only: nothing, not everything


def test_meaning_search_finds_paraphrases(planted, capsys):
    from analysis.search import embed
    from cache.store import open_store

    db, model = planted
    assert main(["search", "water", "--db", str(db), "--model", model, "--how", "meaning", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []  # no vectors yet
    assert main(["embed", "--db", str(db), "--quiet"]) == 0
    assert main(["embed", "--db", str(db), "--quiet"]) == 0
    assert "every explanation has its vector" in capsys.readouterr().err  # resumable
    assert main(["search", "seas and lakes", "--db", str(db), "--model", model, "--how", "meaning", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    top3 = {h["unit"]["index"] for h in hits[:3]}
    assert top3 == {0, 1, 7}  # the three water explanations, none sharing the query's exact words with all
    # the stored ranking is the cosine of independently computed vectors
    q = embed(["seas and lakes"])[0]
    vecs = embed([PLANTED[h["unit"]["index"]] for h in hits])
    assert [h["match"] for h in hits] == pytest.approx((vecs @ q).tolist(), abs=1e-4)
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1, atol=1e-5)
    with open_store(db, read_only=True) as s:
        assert not s.explanations.missing_vectors("all-MiniLM-L6-v2")


def test_search_page_and_similar_units(planted, monkeypatch):
    from tests.helpers import open_page

    db, model = planted
    assert main(["embed", "--db", str(db), "--quiet"]) == 0
    at = open_page("search", db, monkeypatch, model=model, q="rivers")
    assert not at.exception
    links = [m.value for m in at.markdown if m.value.startswith("- [")]
    scores = _bm25_by_hand(list(PLANTED.values()), "rivers")
    assert len(links) == 2 and f"neuron={int(np.argmax(scores))}&" in links[0] and "tab=explanations" in links[0]
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=1, tab="explanations")
    assert not at.exception
    line = next(m.value for m in at.markdown if m.value.startswith("**Units with explanations like**"))
    first = re.search(r"neuron=(\d+)", line).group(1)
    assert first in {"0", "7"}  # the nearest other water explanation comes first
