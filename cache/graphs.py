"""Neuron2Graph graphs: one row per graph, one row per pattern.

A graph is stored as its patterns (activating token first, then the context backwards; -1 = any token), which
is exactly the trie: nodes are the patterns' prefixes, edges join a prefix to its one-token extension, and a
node's activation is the largest of the patterns ending there. Patterns cross this boundary as
``(token ids, activation)`` pairs, the form ``analysis.n2g.graph.Graph.patterns()`` uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pyarrow as pa

from analysis.types import MLP, UnitId
from cache.db import Repo

if TYPE_CHECKING:
    from analysis.n2g.pipeline import N2GResult

Pattern = tuple[list[int], float]

_KEY = "run_id = ? AND source = ? AND layer = ? AND unit = ?"


@dataclass(frozen=True)
class StoredGraph:
    run_id: str
    unit: UnitId
    params: dict
    max_activation: float
    metrics: dict
    """{'firing' | 'non_firing' | 'baseline_firing' | 'baseline_non_firing': {precision, recall, f1}}"""
    test_window_ids: list[int]
    patterns: list[Pattern]
    """Strongest first."""
    seconds: float
    created_at: object


@dataclass(frozen=True)
class GraphQuality:
    """Mean held-out firing precision / recall / F1 of a layer's graphs, beside token-lookup's."""

    layer: int
    n_graphs: int
    precision: float
    recall: float
    f1: float
    baseline_precision: float
    baseline_recall: float
    baseline_f1: float
    seconds: float
    """Mean fitting time per unit."""


class GraphRepo(Repo):
    def put(self, run_id: str, results: list[N2GResult]) -> None:
        """Store fitted graphs (replacing earlier graphs of the same units), in one transaction."""
        if not results:
            return
        graphs, pats = [], {"run_id": [], "source": [], "layer": [], "unit": [], "pattern": [], "activation": []}
        for r in results:
            patterns = r.graph.patterns()
            metrics = {k: {"precision": m.precision, "recall": m.recall, "f1": m.f1} for k, m in (
                ("firing", r.firing), ("non_firing", r.non_firing), ("baseline_firing", r.baseline_firing),
                ("baseline_non_firing", r.baseline_non_firing))}
            graphs.append([run_id, r.unit.source, r.unit.layer, r.unit.index, json.dumps(r.params, sort_keys=True),
                           r.max_activation, json.dumps(metrics), r.firing.f1, r.baseline_firing.f1,
                           r.test_window_ids, len(patterns), r.seconds])
            for p, v in patterns:
                for key, val in zip(pats, (run_id, r.unit.source, r.unit.layer, r.unit.index, p, v)):
                    pats[key].append(val)
        table = pa.table({"run_id": pa.array(pats["run_id"], pa.string()),
                          "source": pa.array(pats["source"], pa.string()),
                          "layer": pa.array(pats["layer"], pa.int16()), "unit": pa.array(pats["unit"], pa.int32()),
                          "pattern": pa.array(pats["pattern"], pa.list_(pa.int32())),
                          "activation": pa.array(pats["activation"], pa.float32())})
        keys = [[run_id, r.unit.source, r.unit.layer, r.unit.index] for r in results]
        with self.transaction() as cur:
            for t in ("n2g_graphs", "n2g_patterns"):
                cur.executemany(f"DELETE FROM {t} WHERE {_KEY}", keys)
            cur.executemany("INSERT INTO n2g_graphs (run_id, source, layer, unit, params, max_activation, metrics, "
                            "firing_f1, baseline_firing_f1, test_window_ids, n_patterns, seconds, created_at) "
                            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?, now())", graphs)
            self._insert_arrow(cur, "n2g_patterns", table)

    def units(self, run_id: str, layer: int, source: str = MLP) -> set[int]:
        """Indices of the units of a layer that have a graph (for resuming)."""
        rows = self._q("SELECT unit FROM n2g_graphs WHERE run_id = ? AND source = ? AND layer = ?",
                       [run_id, source, layer]).fetchall()
        return {r[0] for r in rows}

    def get(self, run_id: str, unit: UnitId) -> StoredGraph | None:
        key = [run_id, unit.source, unit.layer, unit.index]
        row = self._q(f"SELECT params, max_activation, metrics, test_window_ids, seconds, created_at FROM n2g_graphs "
                      f"WHERE {_KEY}", key).fetchone()
        if row is None:
            return None
        pats = self._q(f"SELECT pattern, activation FROM n2g_patterns WHERE {_KEY} ORDER BY activation DESC",
                       key).fetchall()
        return StoredGraph(run_id, unit, json.loads(row[0]), row[1], json.loads(row[2]), list(row[3]),
                           [(list(p), a) for p, a in pats], row[4], row[5])

    def firing_patterns_with(self, run_id: str, token_id: int, firing_fraction: float) -> dict[UnitId, list[Pattern]]:
        """unit -> its firing patterns (activation >= ``firing_fraction`` x the unit's max), for every graph with
        a firing pattern that contains ``token_id``."""
        sql = ("WITH firing AS (SELECT p.* FROM n2g_patterns p JOIN n2g_graphs g USING (run_id, source, layer, unit) "
               "WHERE p.run_id = $run AND p.activation >= $frac * g.max_activation) "
               "SELECT source, layer, unit, pattern, activation FROM firing WHERE (source, layer, unit) IN "
               "(SELECT (source, layer, unit) FROM firing WHERE list_contains(pattern, $tok))")
        out: dict[UnitId, list[Pattern]] = {}
        for src, lay, unit, pattern, act in self._q(sql, {"run": run_id, "tok": token_id,
                                                          "frac": firing_fraction}).fetchall():
            out.setdefault(UnitId(src, lay, unit), []).append((list(pattern), act))
        return out

    def layer_patterns(self, run_id: str, layer: int, source: str = MLP) -> dict[int, list[Pattern]]:
        """unit index -> patterns, for every graph of a layer (for similar-graph lookups)."""
        out: dict[int, list[Pattern]] = {}
        rows = self._q("SELECT unit, pattern, activation FROM n2g_patterns WHERE run_id = ? AND source = ? AND "
                       "layer = ?", [run_id, source, layer]).fetchall()
        for unit, pattern, act in rows:
            out.setdefault(unit, []).append((list(pattern), act))
        return out

    def firing_f1(self, run_id: str, layer: int, source: str = MLP) -> dict[int, tuple[float, float]]:
        """unit -> (held-out firing F1 of its graph, token-lookup's) for the graphs of a source and layer."""
        m = "CAST(json_extract(metrics, '$.{}.f1') AS DOUBLE)"
        rows = self._q(f"SELECT unit, {m.format('firing')}, {m.format('baseline_firing')} FROM n2g_graphs WHERE "
                       "run_id = ? AND layer = ? AND source = ?", [run_id, layer, source]).fetchall()
        return {int(u): (f1, base) for u, f1, base in rows}

    def quality(self, run_id: str) -> list[GraphQuality]:
        """Per layer of a run: mean firing P/R/F1 of its graphs and of token-lookup, mean seconds per unit."""
        m = "CAST(json_extract(metrics, '$.{}.{}') AS DOUBLE)"
        cols = ", ".join(f"avg({m.format(k, x)})" for k in ("firing", "baseline_firing")
                         for x in ("precision", "recall", "f1"))
        rows = self._q(f"SELECT layer, count(*), {cols}, avg(seconds) FROM n2g_graphs WHERE run_id = ? "
                       "GROUP BY layer ORDER BY layer", [run_id]).fetchall()
        return [GraphQuality(*r) for r in rows]
