"""Neuron2Graph graphs in the cache (methods of Store): one row per graph, one row per pattern.

A graph is stored as its patterns (activating token first, then the context backwards; -1 = any token), which
is exactly the trie: nodes are the patterns' prefixes, edges join a prefix to its one-token extension, and a
node's activation is the largest of the patterns ending there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class StoredGraph:
    run_id: str
    layer: int
    unit: int
    params: dict
    max_activation: float
    metrics: dict
    """{'firing' | 'non_firing' | 'baseline_firing' | 'baseline_non_firing': {precision, recall, f1}}"""
    test_window_ids: list[int]
    patterns: list[tuple[list[int], float]]
    seconds: float
    created_at: object


class N2GMixin:
    def put_n2g(self, run_id: str, results: list) -> None:
        """Store analysis.n2g.pipeline.N2GResults (replacing earlier graphs of the same units), in one transaction."""
        if not results:
            return
        graphs, pats = [], {"run_id": [], "layer": [], "unit": [], "pattern": [], "activation": []}
        for r in results:
            patterns = r.graph.patterns()
            metrics = {k: {"precision": m.precision, "recall": m.recall, "f1": m.f1} for k, m in (
                ("firing", r.firing), ("non_firing", r.non_firing), ("baseline_firing", r.baseline_firing),
                ("baseline_non_firing", r.baseline_non_firing))}
            graphs.append([run_id, r.layer, r.unit, json.dumps(r.params, sort_keys=True), r.max_activation,
                           json.dumps(metrics), r.firing.f1, r.baseline_firing.f1, r.test_window_ids, len(patterns),
                           r.seconds])
            for p, v in patterns:
                for key, val in (("run_id", run_id), ("layer", r.layer), ("unit", r.unit), ("pattern", p),
                                 ("activation", v)):
                    pats[key].append(val)
        table = pa.table({"run_id": pa.array(pats["run_id"], pa.string()), "layer": pa.array(pats["layer"], pa.int16()),
                          "unit": pa.array(pats["unit"], pa.int32()),
                          "pattern": pa.array(pats["pattern"], pa.list_(pa.int32())),
                          "activation": pa.array(pats["activation"], pa.float32())})
        keys = [[run_id, r.layer, r.unit] for r in results]
        with self.transaction() as cur:
            for t in ("n2g_graphs", "n2g_patterns"):
                cur.executemany(f"DELETE FROM {t} WHERE run_id = ? AND layer = ? AND unit = ?", keys)
            cur.executemany("INSERT INTO n2g_graphs VALUES (?,?,?,?,?,?,?,?,?,?,?, now())", graphs)
            cur.register("pats_in", table)
            cur.execute("INSERT INTO n2g_patterns SELECT * FROM pats_in")
            cur.unregister("pats_in")

    def n2g_units(self, run_id: str, layer: int) -> set[int]:
        """Units of the layer that have a graph (for resuming)."""
        rows = self._q("SELECT unit FROM n2g_graphs WHERE run_id = ? AND layer = ?", [run_id, layer]).fetchall()
        return {r[0] for r in rows}

    def n2g_graph(self, run_id: str, layer: int, unit: int) -> StoredGraph | None:
        row = self._q("SELECT params, max_activation, metrics, test_window_ids, seconds, created_at FROM n2g_graphs "
                      "WHERE run_id = ? AND layer = ? AND unit = ?", [run_id, layer, unit]).fetchone()
        if row is None:
            return None
        pats = self._q("SELECT pattern, activation FROM n2g_patterns WHERE run_id = ? AND layer = ? AND unit = ? "
                       "ORDER BY activation DESC", [run_id, layer, unit]).fetchall()
        return StoredGraph(run_id, layer, unit, json.loads(row[0]), row[1], json.loads(row[2]), list(row[3]),
                           [(list(p), a) for p, a in pats], row[4], row[5])

    def n2g_patterns_with(self, run_id: str, token_id: int) -> dict[tuple[int, int], list]:
        """(layer, unit) -> the firing patterns (activation >= 0.5 x the unit's max) of every graph with a firing
        pattern that contains ``token_id``."""
        sql = ("WITH firing AS (SELECT p.* FROM n2g_patterns p JOIN n2g_graphs g USING (run_id, layer, unit) "
               "WHERE p.run_id = $run AND p.activation >= 0.5 * g.max_activation) "
               "SELECT layer, unit, pattern, activation FROM firing WHERE (layer, unit) IN "
               "(SELECT (layer, unit) FROM firing WHERE list_contains(pattern, $tok))")
        out: dict[tuple[int, int], list] = {}
        for lay, unit, pattern, act in self._q(sql, {"run": run_id, "tok": token_id}).fetchall():
            out.setdefault((lay, unit), []).append((list(pattern), act))
        return out

    def n2g_layer_patterns(self, run_id: str, layer: int) -> dict[int, list[tuple[list[int], float]]]:
        out: dict[int, list] = {}
        rows = self._q("SELECT unit, pattern, activation FROM n2g_patterns WHERE run_id = ? AND layer = ?",
                       [run_id, layer]).fetchall()
        for unit, pattern, act in rows:
            out.setdefault(unit, []).append((list(pattern), act))
        return out

    def n2g_quality(self, run_id: str) -> list[tuple]:
        """Per layer: (layer, graphs, mean firing P, R, F1, mean token-lookup firing P, R, F1, mean s/neuron)."""
        m = "CAST(json_extract(metrics, '$.{}.{}') AS DOUBLE)"
        cols = ", ".join(f"avg({m.format(k, x)})" for k in ("firing", "baseline_firing")
                         for x in ("precision", "recall", "f1"))
        return self._q(f"SELECT layer, count(*), {cols}, avg(seconds) FROM n2g_graphs WHERE run_id = ? "
                       "GROUP BY layer ORDER BY layer", [run_id]).fetchall()
