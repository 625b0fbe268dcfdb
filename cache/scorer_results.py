"""Scorers' verdicts on explanations (analysis.scorers: embedding, detection, fuzz, output) and the sentence vectors
of windows the embedding scorer compares explanations with."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from cache.db import Repo, content_id, vector_column, vector_matrix


@dataclass(frozen=True)
class StoredScore:
    """One scorer's stored verdict on one explanation (``analysis.scorers.ScorerResult`` as written)."""

    result_id: str
    explanation_id: str
    scorer: str
    params: dict
    metric: str
    score: float | None
    lo: float | None
    hi: float | None
    n_pos: int
    n_neg: int
    metrics: dict
    examples: list
    notes: list
    error: str | None
    usage: dict | None
    created_at: object

    def to_json(self) -> dict:
        return {"scorer": self.scorer, "metric": self.metric, "score": self.score, "lo": self.lo, "hi": self.hi,
                "metrics": self.metrics, "params": self.params, "n_pos": self.n_pos, "n_neg": self.n_neg,
                "notes": self.notes, "error": self.error, "usage": self.usage, "examples": self.examples}


_COLS = ("result_id, explanation_id, scorer, params, metric, score, lo, hi, n_pos, n_neg, metrics, examples, notes, "
         "error, usage, created_at")


def _stored(r, examples: bool = True) -> StoredScore:
    return StoredScore(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], r[6], r[7], r[8], r[9], json.loads(r[10]),
                       json.loads(r[11]) if examples and r[11] else [], json.loads(r[12]) if r[12] else [], r[13],
                       json.loads(r[14]) if r[14] else None, r[15])


class ScorerResultRepo(Repo):
    def put(self, items: list[tuple[str, object]]) -> list[str]:
        """Store (explanation id, ``analysis.scorers.ScorerResult``) pairs in one delete and one insert, each
        replacing an earlier verdict of the same scorer and params on that explanation; their ids."""
        last = {}
        for eid, r in items:
            last[content_id(eid, r.scorer, r.params)] = (eid, r)  # the last of one id wins
        if not last:
            return []
        rows = [(rid, eid, r.scorer, json.dumps(r.params, sort_keys=True), r.metric, r.score, r.lo, r.hi, r.n_pos,
                 r.n_neg, json.dumps(r.metrics), json.dumps(r.examples), json.dumps(r.notes), r.error,
                 json.dumps(r.usage) if r.usage is not None else None) for rid, (eid, r) in last.items()]
        names = _COLS.split(", ")[:-1]
        types = {"score": pa.float64(), "lo": pa.float64(), "hi": pa.float64(), "n_pos": pa.int32(),
                 "n_neg": pa.int32()}
        table = pa.table({c: pa.array([row[i] for row in rows], types.get(c, pa.string()))
                          for i, c in enumerate(names)})
        with self.transaction() as cur:
            cur.register("_new", table)
            cur.execute("DELETE FROM scorer_results s USING _new n WHERE s.result_id = n.result_id")
            cur.execute("INSERT INTO scorer_results BY NAME SELECT *, now() AS created_at FROM _new")
            cur.unregister("_new")
        return list(last)

    def of_explanations(self, explanation_ids: list[str], examples: bool = False) -> dict[str, list[StoredScore]]:
        """Every stored verdict on these explanations, by explanation id (by scorer, then newest first); the
        per-example details only with ``examples``."""
        if not explanation_ids:
            return {}
        rows = self._q(f"SELECT {_COLS.replace('examples', 'examples' if examples else 'NULL')} FROM scorer_results "
                       f"WHERE explanation_id IN ({', '.join('?' * len(explanation_ids))}) "
                       "ORDER BY scorer, created_at DESC", list(explanation_ids)).fetchall()
        out: dict[str, list[StoredScore]] = {}
        for r in rows:
            out.setdefault(r[1], []).append(_stored(r, examples))
        return out

    def done(self, explanation_ids: list[str], scorer: str, params: dict) -> set[str]:
        """Which of these explanations have a successful verdict of this scorer and params (for resuming)."""
        if not explanation_ids:
            return set()
        ids = [content_id(e, scorer, params) for e in explanation_ids]
        have = {r[0] for r in self._q("SELECT result_id FROM scorer_results WHERE error IS NULL AND result_id IN "
                                      f"({', '.join('?' * len(ids))})", ids).fetchall()}
        return {e for e, i in zip(explanation_ids, ids) if i in have}

    def count(self) -> int:
        return self._q("SELECT count(*) FROM scorer_results").fetchone()[0]

    # ---- the sentence vectors of a run's windows ----

    def window_vectors(self, run_id: str, encoder: str, window_ids: list[int]) -> dict[int, np.ndarray]:
        """The stored vectors of these windows (those that have one)."""
        if not window_ids:
            return {}
        t = self.con.cursor().sql(
            "SELECT window_id, vector FROM window_vectors WHERE run_id = $1 AND encoder = $2 AND "
            "list_contains($3, window_id)", params=[run_id, encoder, sorted(set(window_ids))]).to_arrow_table()
        ids = t.column("window_id").to_pylist()
        matrix = vector_matrix(t.column("vector"), len(ids))
        return {w: matrix[i] for i, w in enumerate(ids)}

    def put_window_vectors(self, run_id: str, encoder: str, window_ids: list[int], vectors) -> None:
        if not len(window_ids):
            return
        table = pa.table({"window_id": pa.array(window_ids, pa.int32()),
                          "vector": vector_column(vectors, len(window_ids))})
        with self.transaction() as cur:
            cur.register("_new", table)
            cur.execute("DELETE FROM window_vectors w USING _new n WHERE w.run_id = ? AND w.encoder = ? AND "
                        "w.window_id = n.window_id", [run_id, encoder])
            cur.unregister("_new")
            self._insert_arrow(cur, "window_vectors", table, {"run_id": (run_id, "VARCHAR"),
                                                              "encoder": (encoder, "VARCHAR")})
