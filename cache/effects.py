"""The causal lens' summaries: a unit's ablation effect over its records."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from analysis.types import MLP, Effects, UnitId
from cache.db import Repo

_KEY = "run_id = ? AND source = ? AND layer = ? AND unit = ?"


@dataclass(frozen=True)
class StoredEffects(Effects):
    """A unit's effects as stored: the measurement, how it was asked for and how long it took."""

    params: dict = field(default_factory=dict)
    seconds: float = 0.0


class EffectRepo(Repo):
    def put(self, run_id: str, e: Effects, params: dict, seconds: float) -> None:
        """Store a unit's effects, replacing earlier ones of the same ablation mode."""
        key = [run_id, e.unit.source, e.unit.layer, e.unit.index]
        with self.transaction() as cur:
            cur.execute(f"DELETE FROM unit_effects WHERE {_KEY} AND mode = ?", key + [e.mode])
            cur.execute("INSERT INTO unit_effects VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?, now())", key + [
                e.mode, json.dumps(params, sort_keys=True), e.n_records, e.n_positions, e.mean_loss_change,
                e.mean_loss_change_top, [t for t, _v in e.promoted], [v for _t, v in e.promoted],
                [t for t, _v in e.suppressed], [v for _t, v in e.suppressed], seconds])

    def get(self, run_id: str, unit: UnitId, mode: str | None = None) -> StoredEffects | None:
        """A unit's effects (of ``mode``, else the newest)."""
        row = self._q(f"SELECT mode, params, n_records, n_positions, mean_loss_change, mean_loss_change_top, "
                      f"promoted, promoted_values, suppressed, suppressed_values, seconds FROM unit_effects "
                      f"WHERE {_KEY} AND (? IS NULL OR mode = ?) ORDER BY created_at DESC LIMIT 1",
                      [run_id, unit.source, unit.layer, unit.index, mode, mode]).fetchone()
        if row is None:
            return None
        return StoredEffects(unit, row[0], row[2], row[3], row[4], row[5], list(zip(row[6], row[7])),
                             list(zip(row[8], row[9])), params=json.loads(row[1]), seconds=row[10])

    def units(self, run_id: str, layer: int, mode: str, source: str = MLP) -> set[int]:
        """Units of a layer with effects of ``mode`` (for resuming)."""
        return {r[0] for r in self._q("SELECT unit FROM unit_effects WHERE run_id = ? AND source = ? AND layer = ? "
                                      "AND mode = ?", [run_id, source, layer, mode]).fetchall()}
