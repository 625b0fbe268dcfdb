"""Job: sentence vectors of the explanations that have none yet (for search by meaning; resumable)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.progress import Progress


@dataclass(frozen=True)
class EmbedJob:
    model: str | None = None
    """Only this model's explanations (default: every model's)."""
    chunk: int = 256
    """Explanations per write."""


def embed_explanations(job: EmbedJob, db: Path, progress: Progress = Progress()) -> int:
    """Embed what is missing with ``analysis.search.ENCODER``; returns how many were embedded."""
    from analysis.jobs.reads import cached_model
    from analysis.search import ENCODER, embed
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        model_id = cached_model(store, job.model).model_id if job.model else None
        todo = store.explanations.missing_vectors(ENCODER, model_id)
    bar = progress.bar(len(todo), f"embed explanations ({ENCODER})", unit="explanation")
    for i in range(0, len(todo), job.chunk):
        part = todo[i:i + job.chunk]
        vectors = embed([h.text for h in part])
        with open_store(db) as store:
            store.explanations.put_vectors(ENCODER, [h.explanation_id for h in part], vectors)
        bar.update(len(part))
    bar.close()
    return len(todo)


def keyword_index(store, model_id: str) -> tuple[list, object]:
    """A model's text explanations (cache.explanations.ExplanationHit) and their BM25 index
    (analysis.search.KeywordIndex): what a keyword search ranks. Reads every explanation: the viewer keeps it until
    the database changes."""
    from analysis.search import KeywordIndex

    texts = store.explanations.texts(model_id)
    return texts, KeywordIndex([t.text for t in texts])


def vector_index(store, model_id: str) -> tuple[list[str], object, dict]:
    """A model's explanation ids, the ``analysis.search.VectorIndex`` of their sentence vectors (what a search by
    meaning ranks) and each id's row in it. Reads every vector: the viewer keeps it until the database changes."""
    from analysis.search import ENCODER, VectorIndex

    ids, units, matrix = store.explanations.vectors(ENCODER, model_id)
    return ids, VectorIndex(units, matrix), {i: row for row, i in enumerate(ids)}


def nearest_explanations(store, vectors: tuple, vector, limit: int, not_unit=None) -> list:
    """The explanations nearest ``vector`` by meaning (cache.explanations.ExplanationHit), one per unit, not of
    ``not_unit``, best first; ``vectors``: ``vector_index``."""
    ids, index, _rows = vectors
    return store.explanations.hits([(ids[r.index], r.score) for r in index.nearest(vector, limit, not_unit)])


def search_explanations(store, model: str, query: str, how: str = "keyword", limit: int = 20,
                        keywords: tuple[list, object] | None = None, vectors: tuple[list, object] | None = None
                        ) -> list:
    """Units whose explanations match ``query`` (cache.explanations.ExplanationHit), best first, one hit per unit
    (its best-matching explanation): ``how`` 'keyword' ranks by BM25 over the words, 'meaning' by cosine
    similarity of sentence vectors (the query is embedded here; explanations without a vector are not found:
    run ``embed``). ``store``: an open store (read-only is enough); ``keywords``, ``vectors``: the model's
    ``keyword_index`` and ``vector_index`` when the caller keeps them (else they are built here)."""
    from dataclasses import replace

    from analysis.jobs.reads import cached_model
    from analysis.search import embed
    from analysis.types import UserError

    if not query.strip():
        raise UserError("give some words to search for")
    model_id = cached_model(store, model).model_id
    if how == "meaning":
        return nearest_explanations(store, vectors or vector_index(store, model_id), embed([query])[0], limit)
    if how != "keyword":
        raise UserError(f"unknown search {how!r}: keyword or meaning")
    texts, index = keywords if keywords is not None else keyword_index(store, model_id)
    k = max(limit, 1)
    while True:  # the best k texts, more while units with several of them leave fewer than limit units
        ranked = index.rank(query, k)
        hits, seen = [], set()
        for r in ranked:
            if texts[r.index].unit not in seen:
                seen.add(texts[r.index].unit)
                hits.append(replace(texts[r.index], match=r.score))
        if len(hits) >= limit or len(ranked) < k:
            return hits[:limit]
        k *= 4
