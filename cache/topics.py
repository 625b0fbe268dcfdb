"""Word-pool topics in the cache (methods of Store): per (model, NPMI statistics, layer, unit, source,
polarity) one row of pool and parameters, its stars (with their full NPMI matrices, row-major) and its topics."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

KEY = "model_id = ? AND stats_id = ? AND layer = ? AND unit = ? AND source = ? AND polarity = ?"


@dataclass(frozen=True)
class StoredTopic:
    words: list[str]
    score: float
    star: int
    optimal: bool


@dataclass(frozen=True)
class StoredTopicSet:
    layer: int
    unit: int
    source: str
    polarity: str
    params: dict
    pool: list[str]
    n_tokens: int
    reason: str | None
    random_scores: list[float]
    stars: list[tuple[list[str], np.ndarray]]
    topics: list[StoredTopic]
    seconds: float


class TopicsMixin:
    def put_topics(self, model_id: str, stats_id: str, results: list[tuple], params: dict) -> None:
        """Store (NeuronTopics, random scores, seconds) tuples, replacing earlier ones with the same key."""
        with self.transaction() as cur:
            for nt, random_scores, seconds in results:
                key = [model_id, stats_id, nt.layer, nt.unit, str(nt.source), nt.polarity.value]
                for table in ("topic_sets", "topic_stars", "topics"):
                    cur.execute(f"DELETE FROM {table} WHERE {KEY}", key)
                cur.execute("INSERT INTO topic_sets VALUES (?,?,?,?,?,?,?,?,?,?,?,?, now())",
                            key + [json.dumps(params, sort_keys=True), list(nt.pool.words), nt.pool.n_tokens,
                                   nt.reason, [float(x) for x in random_scores], seconds])
                stars = [key + [i, list(s.words), s.center, float(s.mean_edge), [float(x) for x in s.npmi.ravel()]]
                         for i, s in enumerate(nt.stars)]
                topics = [key + [r, list(t.words), float(t.score), t.star_index, bool(t.optimal)]
                          for r, t in enumerate(nt.topics)]
                if stars:  # (executemany refuses an empty list)
                    cur.executemany("INSERT INTO topic_stars VALUES (?,?,?,?,?,?,?,?,?,?,?)", stars)
                if topics:
                    cur.executemany("INSERT INTO topics VALUES (?,?,?,?,?,?,?,?,?,?,?)", topics)

    def topic_keys(self, model_id: str, stats_id: str, layer: int) -> set[tuple[int, str, str]]:
        """(unit, source, polarity) already computed in a layer (for resuming)."""
        rows = self._q("SELECT unit, source, polarity FROM topic_sets WHERE model_id = ? AND stats_id = ? AND "
                       "layer = ?", [model_id, stats_id, layer]).fetchall()
        return {tuple(r) for r in rows}

    def topic_sets(self, model_id: str, layer: int, unit: int, source: str) -> list[StoredTopicSet]:
        """Both polarities of one unit and source (newest statistics first), with stars and topics."""
        rows = self._q("SELECT stats_id, polarity, params, pool, n_tokens, reason, random_scores, seconds "
                       "FROM topic_sets WHERE model_id = ? AND layer = ? AND unit = ? AND source = ? "
                       "ORDER BY created_at DESC, polarity DESC", [model_id, layer, unit, source]).fetchall()
        out = []
        for stats_id, pol, params, pool, n_tokens, reason, rnd, seconds in rows:
            key = [model_id, stats_id, layer, unit, source, pol]
            stars = []
            for words, flat in self._q(f"SELECT words, npmi FROM topic_stars WHERE {KEY} ORDER BY star", key).fetchall():
                n = len(words)
                stars.append((list(words), np.asarray(flat, dtype=float).reshape(n, n)))
            topics = [StoredTopic(list(w), sc, st, opt) for w, sc, st, opt in self._q(
                f"SELECT words, score, star, optimal FROM topics WHERE {KEY} ORDER BY rank", key).fetchall()]
            out.append(StoredTopicSet(layer, unit, source, pol, json.loads(params), list(pool), n_tokens, reason,
                                      list(rnd), stars, topics, seconds))
        return out

    def units_with_topic_word(self, model_id: str, word: str, limit: int = 50) -> list[tuple]:
        """(layer, unit, source, polarity, score, words) of topics that contain ``word``, best score first."""
        return self._q("SELECT layer, unit, source, polarity, score, words FROM topics WHERE model_id = ? AND "
                       "list_contains(words, ?) ORDER BY score DESC LIMIT ?", [model_id, word, limit]).fetchall()
