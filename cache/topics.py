"""Word-pool topics: per (model, NPMI statistics, unit, projection mode, polarity) one row of pool and
parameters, its stars (their words; the full NPMI matrix, row-major, only in rows stored before migration 012) and
its topics (with each word's contribution)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from analysis.topics.types import contributions
from analysis.types import UnitId
from cache.db import Repo

if TYPE_CHECKING:
    from analysis.topics.types import ScoredTopics

_KEY = "model_id = ? AND stats_id = ? AND unit_source = ? AND layer = ? AND unit = ? AND mode = ? AND polarity = ?"
_KEY_COLS = "model_id, stats_id, unit_source, layer, unit, mode, polarity"


@dataclass(frozen=True)
class StoredTopic:
    words: list[str]
    score: float
    star: int
    optimal: bool
    contrib: list[float]
    """Each word's mean NPMI with the topic's other words."""


@dataclass(frozen=True)
class StoredStar:
    words: list[str]
    npmi: np.ndarray | None
    """``[len(words), len(words)]`` pairwise NPMI in rows stored before migration 012, else None."""


@dataclass(frozen=True)
class StoredTopicSet:
    unit: UnitId
    mode: str
    """The projection mode (hi-c, hi-i, lo-c, lo-i) or 'activation'."""
    polarity: str
    params: dict
    pool: list[str]
    n_tokens: int
    reason: str | None
    random_scores: list[float]
    stars: list[StoredStar]
    topics: list[StoredTopic]
    seconds: float
    dropped: dict[str, int] | None = None
    """Tokens the pool left out, by reason; None for pools stored before this was kept."""


@dataclass(frozen=True)
class TopicHit:
    """A stored topic that contains a searched word."""

    unit: UnitId
    mode: str
    polarity: str
    score: float
    words: list[str]


@dataclass(frozen=True)
class BestTopic:
    """A unit's best topic over its modes (positive end, each mode's newest statistics)."""

    mode: str
    words: list[str]
    score: float
    random_median: float | None
    """Median NPMI of random word sets from the same pool."""


class TopicRepo(Repo):
    def put(self, model_id: str, stats_id: str, results: list[ScoredTopics], params: dict) -> None:
        """Store topic results, replacing earlier ones with the same key, in one transaction (one delete and one
        insert per table for the whole batch)."""
        if not results:
            return
        key_of = [(r.topics.unit.source, r.topics.unit.layer, r.topics.unit.index, r.topics.mode,
                   r.topics.polarity.value) for r in results]
        key_names = ("unit_source", "layer", "unit", "mode", "polarity")

        def with_keys(per_result: list[list[tuple]], names: tuple[str, ...]) -> dict:
            """Columns of rows that each belong to a result: the result's key, then ``names``."""
            rows = [(*key, *row) for key, rs in zip(key_of, per_result) for row in rs]
            columns = list(zip(*rows)) if rows else [()] * (len(key_names) + len(names))
            return {c: list(v) for c, v in zip((*key_names, *names), columns)}

        keys = with_keys([[()] for _ in results], ())
        sets = with_keys([[(list(r.topics.pool.words), r.topics.pool.n_tokens, r.topics.reason,
                            [float(x) for x in r.topics.random_scores], r.seconds,
                            json.dumps(dict(r.topics.pool.dropped)))] for r in results],
                         ("pool", "n_tokens", "reason", "random_scores", "seconds", "pool_dropped"))
        stars = with_keys([[(i, list(st.words), st.center, float(st.mean_edge)) for i, st in enumerate(r.topics.stars)]
                           for r in results], ("star", "words", "center", "mean_edge"))
        tops = with_keys([[(rank, list(tp.words), float(tp.score), tp.star_index, bool(tp.optimal), list(tp.contrib))
                           for rank, tp in enumerate(r.topics.topics)] for r in results],
                         ("rank", "words", "score", "star", "optimal", "contrib"))
        types = {"layer": pa.int16(), "unit": pa.int32(), "n_tokens": pa.int32(), "seconds": pa.float32(),
                 "star": pa.int32(), "rank": pa.int32(), "contrib": pa.list_(pa.float32())}

        def table(cols: dict) -> pa.Table:
            return pa.table({c: pa.array(v, types.get(c)) for c, v in cols.items()})

        match = " AND ".join(f"t.{c} = k.{c}" for c in keys)
        with self.transaction() as cur:
            cur.register("_keys", table(keys))
            for name in ("topic_sets", "topic_stars", "topics"):
                cur.execute(f"DELETE FROM {name} t USING _keys k WHERE t.model_id = ? AND t.stats_id = ? AND {match}",
                            [model_id, stats_id])
            cur.unregister("_keys")
            for name, cols, extra in (("topic_sets", sets, ", ? AS params, now() AS created_at"),
                                      ("topic_stars", stars, ""), ("topics", tops, "")):
                if not cols["unit"]:
                    continue
                cur.register("_rows", table(cols))
                args = [model_id, stats_id] + ([json.dumps(params, sort_keys=True)] if extra else [])
                cur.execute(f"INSERT INTO {name} BY NAME SELECT *, ? AS model_id, ? AS stats_id{extra} FROM _rows",
                            args)
                cur.unregister("_rows")

    def keys(self, model_id: str, stats_id: str, layer: int) -> set[tuple[UnitId, str, str]]:
        """(unit, mode, polarity) already computed in a layer with these statistics (for resuming)."""
        rows = self._q("SELECT unit_source, layer, unit, mode, polarity FROM topic_sets WHERE model_id = ? AND "
                       "stats_id = ? AND layer = ?", [model_id, stats_id, layer]).fetchall()
        return {(UnitId(s, l, u), m, p) for s, l, u, m, p in rows}

    def sets(self, model_id: str, unit: UnitId, mode: str, stats_id: str | None = None) -> list[StoredTopicSet]:
        """Both polarities of one unit and mode, with stars and topics: of ``stats_id``, else of the newest
        statistics this unit has topics for."""
        if stats_id is None:
            row = self._q("SELECT stats_id FROM topic_sets WHERE model_id = ? AND unit_source = ? AND layer = ? AND "
                          "unit = ? AND mode = ? ORDER BY created_at DESC LIMIT 1",
                          [model_id, unit.source, unit.layer, unit.index, mode]).fetchone()
            if row is None:
                return []
            stats_id = row[0]
        rows = self._q("SELECT polarity, params, pool, n_tokens, reason, random_scores, seconds, pool_dropped FROM topic_sets "
                       "WHERE model_id = ? AND stats_id = ? AND unit_source = ? AND layer = ? AND unit = ? AND "
                       "mode = ? ORDER BY polarity DESC",
                       [model_id, stats_id, unit.source, unit.layer, unit.index, mode]).fetchall()
        out = []
        for pol, params, pool, n_tokens, reason, rnd, seconds, dropped in rows:
            key = [model_id, stats_id, unit.source, unit.layer, unit.index, mode, pol]
            stars = []
            for words, flat in self._q(f"SELECT words, npmi FROM topic_stars WHERE {_KEY} ORDER BY star", key).fetchall():
                n = len(words)
                stars.append(StoredStar(list(words), None if flat is None else
                                        np.asarray(flat, dtype=float).reshape(n, n)))
            topics = [StoredTopic(list(w), sc, st, opt, list(c) if c is not None else  # older rows: from the star
                                  contributions(w, stars[st].words, stars[st].npmi))
                      for w, sc, st, opt, c in self._q(f"SELECT words, score, star, optimal, contrib FROM topics WHERE "
                                                       f"{_KEY} ORDER BY rank", key).fetchall()]
            out.append(StoredTopicSet(unit, mode, pol, json.loads(params), list(pool), n_tokens, reason, list(rnd),
                                      stars, topics, seconds, None if dropped is None else json.loads(dropped)))
        return out

    def best_scores(self, model_id: str, source: str, layer: int, mode: str, polarity: str = "pos"
                    ) -> dict[int, tuple[float | None, float | None]]:
        """unit -> (its best topic's NPMI or None when it has no topic, the median NPMI of its random word sets)
        for every unit of a source and layer with topics in ``mode`` (of each unit's newest statistics)."""
        rows = self._q(
            "WITH s AS (SELECT unit, stats_id, random_scores, row_number() OVER (PARTITION BY unit ORDER BY created_at "
            "DESC) AS r FROM topic_sets WHERE model_id = $m AND unit_source = $s AND layer = $l AND mode = $mode AND "
            "polarity = $p) "
            "SELECT s.unit, max(t.score), list_median(s.random_scores) FROM s LEFT JOIN topics t ON t.model_id = $m "
            "AND t.stats_id = s.stats_id AND t.unit_source = $s AND t.layer = $l AND t.unit = s.unit AND t.mode = $mode "
            "AND t.polarity = $p WHERE s.r = 1 GROUP BY s.unit, s.random_scores",
            {"m": model_id, "s": source, "l": layer, "mode": mode, "p": polarity}).fetchall()
        return {int(u): (best, rnd) for u, best, rnd in rows}

    def with_word(self, model_id: str, word: str, limit: int = 50) -> list[TopicHit]:
        """Stored topics that contain ``word``, best score first."""
        rows = self._q("SELECT unit_source, layer, unit, mode, polarity, score, words FROM topics WHERE model_id = ? "
                       "AND list_contains(words, ?) ORDER BY score DESC LIMIT ?", [model_id, word, limit]).fetchall()
        return [TopicHit(UnitId(s, l, u), m, p, sc, list(w)) for s, l, u, m, p, sc, w in rows]

    def best_of(self, model_id: str, unit: UnitId) -> tuple[int, BestTopic | None]:
        """(how many topic sets the unit has, its best positive-end topic or None)."""
        args = {"m": model_id, "s": unit.source, "l": unit.layer, "u": unit.index}
        n = self._q("SELECT count(*) FROM topic_sets WHERE model_id = $m AND unit_source = $s AND layer = $l AND "
                    "unit = $u", args).fetchone()[0]
        row = self._q(
            "WITH s AS (SELECT stats_id, mode, random_scores, row_number() OVER (PARTITION BY mode ORDER BY "
            "created_at DESC) AS r FROM topic_sets WHERE model_id = $m AND unit_source = $s AND layer = $l AND "
            "unit = $u AND polarity = 'pos') "
            "SELECT s.mode, t.words, t.score, list_median(s.random_scores) FROM s JOIN topics t ON t.model_id = $m "
            "AND t.stats_id = s.stats_id AND t.unit_source = $s AND t.layer = $l AND t.unit = $u AND t.mode = s.mode "
            "AND t.polarity = 'pos' WHERE s.r = 1 ORDER BY t.score DESC LIMIT 1", args).fetchone()
        return n, (BestTopic(row[0], list(row[1]), row[2], row[3]) if row else None)
