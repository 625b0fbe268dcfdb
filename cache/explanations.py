"""Explanations of units and their scored simulations."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from analysis.types import MLP, Explanation, UnitId
from cache.db import Repo, content_id, vector_column, vector_matrix

if TYPE_CHECKING:
    from analysis.evaluate import ScoredSimulation


@dataclass(frozen=True)
class StoredExplanation:
    explanation_id: str
    run_id: str
    unit: UnitId
    explainer: str
    params: dict
    text: str
    created_at: object
    usage: dict | None = None
    """What the API calls that wrote it cost (requests, cached, prompt_tokens, completion_tokens), or None."""

    @property
    def degenerate(self) -> str | None:
        """Why the text says nothing about the unit (``analysis.prompts.degenerate_reason``), or None."""
        from analysis.prompts import degenerate_reason

        return None if self.explainer == "n2g" else degenerate_reason(self.text)


@dataclass(frozen=True)
class StoredSimulation:
    simulation_id: str
    explanation_id: str
    simulator: str
    params: dict
    scoring_set: str
    window_ids: list[int]
    simulated: list[list[float]] | None
    """Per record, per token, on the 0–10 scale; None if the simulation failed."""
    score: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    error: str | None
    created_at: object
    calibration: dict | None = None
    """The calibrated simulator's fit and scores (``analysis.evaluate.calibrate``), or None."""
    usage: dict | None = None
    """What its API calls cost (requests, cached, prompt_tokens, completion_tokens), or None."""
    lo: float | None = None
    hi: float | None = None
    """The score's 95 % interval (None: scored before intervals were kept)."""


@dataclass(frozen=True)
class StoredBaseline:
    """An explanation-blind predictor's score of a unit (token-lookup: each token's mean activation): what any
    explanation must beat, stored once per unit and record set."""

    unit: UnitId
    predictor: str
    params: dict
    scoring_set: str
    window_ids: list[int]
    predicted: list[list[float]] | None
    """Per record, per token, on the 0–10 scale; None if the prediction failed."""
    score: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    max_activation: float | None
    """The max that maps the 0–10 scale to activations (None for baselines stored before it was kept)."""
    error: str | None
    created_at: object
    calibration: dict | None = None
    lo: float | None = None
    hi: float | None = None
    """The score's 95 % interval (None: scored before intervals were kept)."""


@dataclass(frozen=True)
class BaselineScore:
    """One unit's successful baseline score (for score distributions: no predictions read)."""

    unit: UnitId
    predictor: str
    scoring_set: str
    score: float


@dataclass(frozen=True)
class ExplanationHit:
    """An explanation found by a search: its unit, text and how well it matched (BM25 score or cosine)."""

    explanation_id: str
    unit: UnitId
    explainer: str
    text: str
    match: float


_BASE_COLS = ("source, layer, unit, predictor, params, scoring_set, window_ids, predicted, score, rsquared, "
              "absolute_dev_explained, max_activation, error, created_at, calibration, lo, hi")
_EXP_COLS = "explanation_id, run_id, source, layer, unit, explainer, params, text, created_at, usage"
_SIM_COLS = ("simulation_id, explanation_id, simulator, params, scoring_set, window_ids, simulated, score, rsquared, "
             "absolute_dev_explained, error, created_at, calibration, usage, lo, hi")


_TYPES = {"layer": pa.int16(), "unit": pa.int32(), "window_ids": pa.list_(pa.int32()), "score": pa.float64(),
          "rsquared": pa.float64(), "absolute_dev_explained": pa.float64(), "max_activation": pa.float32(),
          "lo": pa.float64(), "hi": pa.float64()}


def _table(cols: dict) -> pa.Table:
    """Columns as an Arrow table for one bulk statement (strings and nulls inferred; numbers typed as stored)."""
    return pa.table({c: pa.array(v, _TYPES.get(c, pa.string())) for c, v in cols.items()})


def _json_or_none(d: dict | None) -> str | None:
    return None if d is None else json.dumps(d, sort_keys=True)


def _explanation(r) -> StoredExplanation:
    return StoredExplanation(r[0], r[1], UnitId(r[2], r[3], r[4]), r[5], json.loads(r[6]), r[7], r[8],
                             json.loads(r[9]) if r[9] else None)


class ExplanationRepo(Repo):
    def put(self, run_id: str, unit: UnitId, exp: Explanation) -> str:
        """Store an explanation (once: the id is a hash of everything about it); return its id."""
        return self.put_many([(run_id, unit, exp)])[0]

    def put_many(self, items: list[tuple[str, UnitId, Explanation]]) -> list[str]:
        """``put`` of many (run id, unit, explanation) in one statement; their ids, in order."""
        ids, seen = [], set()
        cols = {c: [] for c in ("explanation_id", "run_id", "source", "layer", "unit", "explainer", "params", "text",
                                "usage")}
        for run_id, unit, exp in items:
            # neurons keep the ids they had before units named their source
            who = (unit.layer, unit.index) if unit.source == MLP else (unit.source, unit.layer, unit.index)
            eid = content_id(run_id, *who, exp.explainer, exp.params, exp.text)
            ids.append(eid)
            if eid in seen:
                continue
            seen.add(eid)
            for c, v in zip(cols, (eid, run_id, unit.source, unit.layer, unit.index, exp.explainer,
                                   json.dumps(exp.params, sort_keys=True), exp.text, _json_or_none(exp.usage))):
                cols[c].append(v)
        if not ids:
            return ids
        with self.transaction() as cur:
            cur.register("_new", _table(cols))
            cur.execute("INSERT OR IGNORE INTO explanations BY NAME SELECT *, now() AS created_at FROM _new")
            cur.unregister("_new")
        return ids

    def units_explained_by(self, run_id: str, source: str, layer: int, explainer: str | None) -> set[int]:
        """The units of a layer with an explanation by ``explainer`` (None: by any; for resuming)."""
        return {r[0] for r in self._q("SELECT DISTINCT unit FROM explanations WHERE run_id = ? AND source = ? AND "
                                      "layer = ? AND (? IS NULL OR explainer = ?)",
                                      [run_id, source, layer, explainer, explainer]).fetchall()}

    def of_unit(self, run_id: str, unit: UnitId) -> list[StoredExplanation]:
        rows = self._q(f"SELECT {_EXP_COLS} FROM explanations WHERE run_id = ? AND source = ? AND layer = ? "
                       "AND unit = ? ORDER BY created_at", [run_id, unit.source, unit.layer, unit.index]).fetchall()
        return [_explanation(r) for r in rows]

    def of_units(self, run_id: str, source: str, layer: int, indices: list[int]) -> dict[int, list[StoredExplanation]]:
        """``of_unit`` of many units of one layer in one query: index -> its explanations (oldest first)."""
        rows = self._q(f"SELECT {_EXP_COLS} FROM explanations WHERE run_id = ? AND source = ? AND layer = ? "
                       "AND list_contains(?, unit) ORDER BY unit, created_at",
                       [run_id, source, layer, sorted(set(indices))]).fetchall()
        out: dict[int, list[StoredExplanation]] = {i: [] for i in indices}
        for r in rows:
            out[r[4]].append(_explanation(r))
        return out

    def put_simulation(self, explanation_id: str, sim: ScoredSimulation) -> str:
        """Store a scored simulation, replacing an earlier one with the same explanation, simulator, params and
        scoring set."""
        return self.put_simulations([(explanation_id, sim)])[0]

    def put_simulations(self, items: list[tuple[str, ScoredSimulation]]) -> list[str]:
        """``put_simulation`` of many (explanation id, scored simulation) in one delete and one insert; their ids."""
        ids, last = [], {}
        for eid, sim in items:
            ids.append(sid := content_id(eid, sim.simulator, sim.params, sim.scoring_set))
            last[sid] = (eid, sim)  # the last of one id wins, as with one put after another
        if not ids:
            return ids
        cols = {c: [] for c in ("simulation_id", "explanation_id", "simulator", "params", "scoring_set", "window_ids",
                                "simulated", "score", "rsquared", "absolute_dev_explained", "error", "calibration",
                                "usage", "lo", "hi")}
        for sid, (eid, sim) in last.items():
            for c, v in zip(cols, (sid, eid, sim.simulator, json.dumps(sim.params, sort_keys=True), sim.scoring_set,
                                   list(sim.window_ids), json.dumps(sim.simulated) if sim.simulated is not None
                                   else None, sim.score, sim.rsquared, sim.absolute_dev_explained, sim.error,
                                   _json_or_none(sim.calibration), _json_or_none(sim.usage), sim.lo, sim.hi)):
                cols[c].append(v)
        with self.transaction() as cur:
            cur.register("_new", _table(cols))
            cur.execute("DELETE FROM simulations s USING _new n WHERE s.simulation_id = n.simulation_id")
            cur.execute("INSERT INTO simulations BY NAME SELECT *, now() AS created_at FROM _new")
            cur.unregister("_new")
        return ids

    def simulations(self, explanation_id: str) -> list[StoredSimulation]:
        rows = self._q(f"SELECT {_SIM_COLS} FROM simulations WHERE explanation_id = ? ORDER BY created_at",
                       [explanation_id]).fetchall()
        return [StoredSimulation(r[0], r[1], r[2], json.loads(r[3]), r[4], list(r[5]),
                                 json.loads(r[6]) if r[6] else None, *r[7:12], json.loads(r[12]) if r[12] else None,
                                 json.loads(r[13]) if r[13] else None, r[14], r[15])
                for r in rows]

    def with_simulations(self, run_id: str, unit: UnitId) -> list[tuple[StoredExplanation, list[StoredSimulation]]]:
        """Every explanation of a unit with its scored simulations (what the explanations panel shows)."""
        return [(e, self.simulations(e.explanation_id)) for e in self.of_unit(run_id, unit)]

    def has_simulation(self, explanation_id: str, simulator: str, scoring_set: str) -> bool:
        """Whether a successful simulation of this simulator and set exists (for resuming)."""
        return self._q("SELECT 1 FROM simulations WHERE explanation_id = ? AND simulator = ? AND scoring_set = ? "
                       "AND error IS NULL", [explanation_id, simulator, scoring_set]).fetchone() is not None

    def best(self, run_id: str, unit: UnitId, rows: list | None = None
             ) -> tuple[StoredExplanation, StoredSimulation] | None:
        """A unit's best-scored text explanation (by any stored simulator: all of them read the explanation; the
        Neuron2Graph summary is the graph's, not text) and its simulation, a degenerate one (empty, a copied
        few-shot explanation) only when there is no other; ``rows``: its ``with_simulations`` when the caller has
        them."""
        rows = self.with_simulations(run_id, unit) if rows is None else rows
        scored = [(e, s) for e, sims in rows if e.explainer != "n2g" for s in sims
                  if s.error is None and s.score is not None]
        return max(scored, key=lambda es: (es[0].degenerate is None, es[1].score), default=None)

    def put_baseline(self, run_id: str, unit: UnitId, sim: ScoredSimulation) -> None:
        """Store an explanation-blind prediction's score of a unit, replacing the one of the same predictor and
        record set."""
        self.put_baselines([(run_id, unit, sim)])

    def put_baselines(self, items: list[tuple[str, UnitId, ScoredSimulation]]) -> None:
        """``put_baseline`` of many (run id, unit, scored prediction) in one delete and one insert."""
        if not items:
            return
        last = {(run_id, u.source, u.layer, u.index, sim.simulator, sim.scoring_set): (run_id, u, sim)
                for run_id, u, sim in items}  # the last of one key wins, as with one put after another
        cols = {c: [] for c in ("run_id", "source", "layer", "unit", "predictor", "params", "scoring_set",
                                "window_ids", "predicted", "score", "rsquared", "absolute_dev_explained",
                                "max_activation", "error", "calibration", "lo", "hi")}
        for run_id, u, sim in last.values():
            for c, v in zip(cols, (run_id, u.source, u.layer, u.index, sim.simulator,
                                   json.dumps(sim.params, sort_keys=True), sim.scoring_set, list(sim.window_ids),
                                   json.dumps(sim.simulated) if sim.simulated is not None else None, sim.score,
                                   sim.rsquared, sim.absolute_dev_explained, sim.max_activation, sim.error,
                                   _json_or_none(sim.calibration), sim.lo, sim.hi)):
                cols[c].append(v)
        key = ("run_id", "source", "layer", "unit", "predictor", "scoring_set")
        with self.transaction() as cur:
            cur.register("_new", _table(cols))
            cur.execute("DELETE FROM baselines b USING _new n WHERE " + " AND ".join(f"b.{c} = n.{c}" for c in key))
            cur.execute("INSERT INTO baselines BY NAME SELECT *, now() AS created_at FROM _new")
            cur.unregister("_new")

    def baselines(self, run_id: str, unit: UnitId | None = None) -> list[StoredBaseline]:
        """The baselines of one unit of a run (every unit's when ``unit`` is None), by unit then predictor and
        record set."""
        sql = f"SELECT {_BASE_COLS} FROM baselines WHERE run_id = ?"
        args: list = [run_id]
        if unit is not None:
            sql += " AND source = ? AND layer = ? AND unit = ?"
            args += [unit.source, unit.layer, unit.index]
        rows = self._q(sql + " ORDER BY source, layer, unit, predictor, scoring_set", args).fetchall()
        return [StoredBaseline(UnitId(r[0], r[1], r[2]), r[3], json.loads(r[4]), r[5], list(r[6]),
                               json.loads(r[7]) if r[7] else None, *r[8:14], json.loads(r[14]) if r[14] else None,
                               r[15], r[16])
                for r in rows]

    def has_baseline(self, run_id: str, unit: UnitId, predictor: str, scoring_set: str) -> bool:
        return self._q("SELECT 1 FROM baselines WHERE run_id = ? AND source = ? AND layer = ? AND unit = ? AND "
                       "predictor = ? AND scoring_set = ? AND error IS NULL",
                       [run_id, unit.source, unit.layer, unit.index, predictor, scoring_set]).fetchone() is not None

    def baseline_scores(self, run_id: str) -> list[BaselineScore]:
        """Every unit's successful baseline scores in a run (what a layer overview needs of 46k baselines)."""
        rows = self._q("SELECT source, layer, unit, predictor, scoring_set, score FROM baselines WHERE run_id = ? AND "
                       "error IS NULL AND score IS NOT NULL ORDER BY source, layer, unit, predictor, scoring_set",
                       [run_id]).fetchall()
        return [BaselineScore(UnitId(r[0], r[1], r[2]), r[3], r[4], r[5]) for r in rows]

    def units_with_baseline(self, run_id: str, source: str, layer: int, predictor: str, scoring_set: str
                            ) -> set[int]:
        """The units of a layer with a successful baseline of this predictor and set (for resuming)."""
        return {r[0] for r in self._q("SELECT DISTINCT unit FROM baselines WHERE run_id = ? AND source = ? AND "
                                      "layer = ? AND predictor = ? AND scoring_set = ? AND error IS NULL",
                                      [run_id, source, layer, predictor, scoring_set]).fetchall()}

    def counts(self) -> dict[str, int]:
        """How many explanations, scored simulations, baselines and sentence vectors the database holds."""
        row = self._q("SELECT (SELECT count(*) FROM explanations), (SELECT count(*) FROM simulations), "
                      "(SELECT count(*) FROM baselines), (SELECT count(*) FROM explanation_vectors)").fetchone()
        return dict(zip(("explanations", "simulations", "baselines", "vectors"), row))

    # ---- search: explanation texts of a model, their sentence vectors ----

    _TEXTS = ("SELECT e.explanation_id, e.source, e.layer, e.unit, e.explainer, e.text FROM explanations e JOIN runs r "
              "USING (run_id) WHERE r.model_id = ? AND e.explainer <> 'n2g'")

    def texts(self, model_id: str) -> list[ExplanationHit]:
        """Every text explanation of a model's units (Neuron2Graph summaries left out), match 0."""
        rows = self._q(self._TEXTS + " ORDER BY e.explanation_id", [model_id]).fetchall()
        return [ExplanationHit(r[0], UnitId(r[1], r[2], r[3]), r[4], r[5], 0.0) for r in rows]

    def missing_vectors(self, encoder: str, model_id: str | None = None) -> list[ExplanationHit]:
        """Text explanations without a vector of ``encoder`` (of one model, or of all)."""
        sql = ("SELECT e.explanation_id, e.source, e.layer, e.unit, e.explainer, e.text FROM explanations e JOIN runs r "
               "USING (run_id) WHERE e.explainer <> 'n2g' AND (? IS NULL OR r.model_id = ?) AND e.explanation_id NOT IN "
               "(SELECT explanation_id FROM explanation_vectors WHERE encoder = ?) ORDER BY e.explanation_id")
        rows = self._q(sql, [model_id, model_id, encoder]).fetchall()
        return [ExplanationHit(r[0], UnitId(r[1], r[2], r[3]), r[4], r[5], 0.0) for r in rows]

    def put_vectors(self, encoder: str, ids: list[str], vectors) -> None:
        """Store sentence vectors (``[len(ids), dim]``, any array-like) of explanations under ``encoder``."""
        if not len(ids):
            return
        with self.transaction() as cur:
            self._insert_arrow(cur, "explanation_vectors", pa.table({
                "explanation_id": pa.array(ids, pa.string()), "encoder": pa.array([encoder] * len(ids), pa.string()),
                "vector": vector_column(vectors, len(ids))}))

    def vectors_of(self, encoder: str, explanation_ids: list[str]) -> dict[str, np.ndarray]:
        """The stored vectors of these explanations (those that have one), in one query."""
        if not explanation_ids:
            return {}
        t = self.con.cursor().sql("SELECT explanation_id, vector FROM explanation_vectors WHERE encoder = $1 AND "
                                  "list_contains($2, explanation_id)",
                                  params=[encoder, sorted(set(explanation_ids))]).to_arrow_table()
        ids = t.column("explanation_id").to_pylist()
        matrix = vector_matrix(t.column("vector"), len(ids))
        return {e: matrix[i] for i, e in enumerate(ids)}

    def vector(self, encoder: str, explanation_id: str) -> list[float] | None:
        row = self._q("SELECT vector FROM explanation_vectors WHERE encoder = ? AND explanation_id = ?",
                      [encoder, explanation_id]).fetchone()
        return list(row[0]) if row else None

    def vectors(self, encoder: str, model_id: str) -> tuple[list[str], list[UnitId], np.ndarray]:
        """Every text explanation of a model with a vector of ``encoder``: (ids, units, ``[n, dim]`` float32), in
        explanation id order (``analysis.search.VectorIndex`` keeps them for many queries)."""
        t = self.con.cursor().sql(  # as a relation: its Arrow table is not copied again (as a DB-API result's is)
            "SELECT v.explanation_id, e.source, e.layer, e.unit, v.vector FROM explanation_vectors v JOIN explanations e "
            "USING (explanation_id) JOIN runs r USING (run_id) WHERE v.encoder = ? AND r.model_id = ? AND "
            "e.explainer <> 'n2g' ORDER BY v.explanation_id", params=[encoder, model_id]).to_arrow_table()
        units = [UnitId(s, l, u) for s, l, u in zip(*(t.column(c).to_pylist() for c in ("source", "layer", "unit")))]
        return t.column("explanation_id").to_pylist(), units, vector_matrix(t.column("vector"), len(units))

    def hits(self, ranked: list[tuple[str, float]]) -> list[ExplanationHit]:
        """(explanation id, score) pairs as hits with their texts, in the given order."""
        if not ranked:
            return []
        rows = {r[0]: r for r in self._q(
            "SELECT explanation_id, source, layer, unit, explainer, text FROM explanations WHERE explanation_id IN "
            f"({', '.join('?' * len(ranked))})", [i for i, _ in ranked]).fetchall()}
        return [ExplanationHit(i, UnitId(*rows[i][1:4]), rows[i][4], rows[i][5], float(score)) for i, score in ranked
                if i in rows]
