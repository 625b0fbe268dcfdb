"""The keyword index built once and searched often ranks as a fresh bm25s retrieval over the same texts does; the
vector index ranks as cosine similarity computed row by row."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis.search import KeywordIndex, bm25_rank

WORDS = "river lake water stream city paris france year date number digit bracket tag ocean sea wave".split()


def fresh_retrieval(texts: list[str], query: str) -> dict[int, float]:
    """What a search did before the index was kept: tokenize and index the texts, retrieve every one, keep
    score > 0."""
    import bm25s

    kw = dict(stopwords="en", show_progress=False)
    corpus, q = bm25s.tokenize(texts, **kw), bm25s.tokenize([query], **kw)
    if not len(q.vocab):
        return {}
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    docs, scores = retriever.retrieve(q, k=len(texts), show_progress=False)
    return {int(d): float(s) for d, s in zip(docs[0], scores[0]) if s > 0}


def test_a_kept_index_ranks_as_a_fresh_retrieval():
    rng = random.Random(0)
    texts = [" ".join(rng.choices(WORDS + ["the", "and", "of"], k=rng.randint(2, 9))) for _ in range(300)]
    index = KeywordIndex(texts)
    for query in ("river", "water river", "the Paris of France", "sea, waves and tags", "unknown words"):
        want = fresh_retrieval(texts, query)
        got = index.rank(query)
        assert {r.index: r.score for r in got} == pytest.approx(want, rel=1e-6), query
        assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
        assert [r.index for r in index.rank(query, 5)] == [r.index for r in got[:5]] == \
            [r.index for r in bm25_rank(texts, query, 5)]
    assert index.rank("the and of") == [] and index.rank("  ") == []  # stop words only: nothing, not everything
    assert KeywordIndex([]).rank("river") == [] and KeywordIndex(["the", "of"]).rank("the") == []


def test_vector_index_ranks_units_by_their_nearest_row_as_brute_force_does():
    """One hit per unit (its nearest row), the asked unit left out, best first: against cosine similarity computed
    row by row in float64."""
    from analysis.search import VectorIndex

    rng = np.random.default_rng(5)
    units = [f"u{rng.integers(40)}" for _ in range(300)]
    matrix = rng.normal(size=(300, 16)).astype(np.float32)
    matrix[7] = 0.0  # a zero vector is never nearest, and never a division by zero
    index = VectorIndex(units, matrix)
    q = rng.normal(size=16)
    for limit, skip in ((5, None), (12, units[0]), (100, None)):
        got = index.nearest(q, limit, not_unit=skip)
        cos = [float(m @ q / (np.linalg.norm(m) * np.linalg.norm(q))) if m.any() else 0.0 for m in matrix.astype(float)]
        best: dict = {}
        for i in np.argsort([-c for c in cos], kind="stable"):
            if units[i] != skip and units[i] not in best:
                best[units[i]] = (int(i), cos[i])
        want = list(best.values())[:limit]
        assert [units[r.index] for r in got] == [units[i] for i, _ in want]
        assert [r.score for r in got] == pytest.approx([c for _, c in want], abs=1e-5)
    assert VectorIndex([], np.zeros((0, 16))).nearest(q, 5) == []


def test_a_large_vector_index_scans_a_few_groups_and_finds_the_nearest_of_clustered_vectors(monkeypatch):
    """Past EXACT_UP_TO rows the index is an inverted file: on clustered vectors (as sentence vectors are) its
    hits are the exact search's (recall@10 ≥ 0.95 over 30 queries near the data), each with its exact cosine."""
    from analysis import search
    from analysis.search import VectorIndex

    monkeypatch.setattr(search, "EXACT_UP_TO", 1000)
    rng = np.random.default_rng(11)
    centres = rng.normal(size=(150, 32))
    rows = centres[rng.integers(150, size=20_000)] + 0.35 * rng.normal(size=(20_000, 32))
    units = list(range(20_000))
    approx, exact = VectorIndex(units, rows), VectorIndex(units[:], rows)
    exact.centroids = None
    exact.matrix = approx.matrix[np.argsort(approx.order)]  # the same normed rows, in their own order
    assert approx.centroids is not None and len(approx.centroids) == int(np.sqrt(20_000))
    found = 0
    for q in centres[:30] + 0.35 * rng.normal(size=(30, 32)):
        a, e = approx.nearest(q, 10), exact.nearest(q, 10)
        found += len({r.index for r in a} & {r.index for r in e})
        for r in a:
            assert r.score == pytest.approx(float(rows[r.index] @ q / np.linalg.norm(rows[r.index]) / np.linalg.norm(q)),
                                            abs=1e-5)
    assert found / 300 >= 0.95, found


def test_a_rows_vector_is_its_normed_input_in_either_layout(monkeypatch):
    from analysis import search
    from analysis.search import VectorIndex

    rng = np.random.default_rng(2)
    rows = rng.normal(size=(3000, 8))
    for exact_up_to in (10**6, 100):
        monkeypatch.setattr(search, "EXACT_UP_TO", exact_up_to)
        index = VectorIndex(list(range(3000)), rows)
        for i in (0, 17, 2999):
            assert index.row(i) == pytest.approx(rows[i] / np.linalg.norm(rows[i]), abs=1e-6)
