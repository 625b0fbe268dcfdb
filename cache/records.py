"""A harvest's results: per-unit statistics, records (activations per window), sample references and the
token table; and the searches over them.

Storage layout: activations are stored once per (unit, window) as float16 bytes and referenced by the
top/random/quantile sample rows; token ids once per window (``windows``), token strings once per tokenizer.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from analysis.histogram import HIST_BIN_EDGES, hist_order
from analysis.tokens import joined_runs
from analysis.types import MLP, ActivationRecord, UnitId, UnitRecord, UnitStats
from cache.catalog import CatalogRepo
from cache.db import Repo
from cache.runs import RunInfo

if TYPE_CHECKING:
    from analysis.types import LayerSummary

UNITS_KEY = "run_id = ? AND source = ? AND layer = ? AND list_contains(?::INTEGER[], unit)"


@dataclass(frozen=True)
class UnitOnToken:
    """A unit that fires on a token (from the token table)."""

    unit: UnitId
    mean: float
    """Mean activation of the unit on the token."""
    count: int
    z: float | None
    """(mean on the token − unit mean) / unit std; None for a constant unit."""


@dataclass(frozen=True)
class UnitSummary:
    """A unit's headline statistics (for lists ordered by one of them)."""

    unit: UnitId
    max: float
    mean: float
    std: float
    skewness: float
    kurtosis: float
    frac_active: float


SORTS = {"max": "max DESC", "kurtosis": "kurtosis DESC", "skewness": "skewness DESC",
         "sparsest": "frac_active ASC", "densest": "frac_active DESC", "min": "min ASC"}
"""The orders of ``RecordRepo.units_by``."""


class RecordRepo(Repo):
    def put_layer(self, run_id: str, source: str, summary: LayerSummary, window_lengths: np.ndarray) -> None:
        """Write one slot of a harvest (a layer of one source) in its own transaction, replacing what the run had
        there: a writer killed mid-write loses that layer only, and the next try writes it again into the blocks
        the aborted one left free. ``window_lengths``: each window's token count, by window id (``lengths_of``)."""
        with self.transaction() as cur:
            for table in ("unit_stats", "records", "samples", "token_means"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ? AND source = ? AND layer = ?",
                            [run_id, source, summary.layer])
            self._write_layer(cur, run_id, source, summary, window_lengths)

    @staticmethod
    def lengths_of(window_lengths: dict[int, int]) -> np.ndarray:
        """Window id -> token count as an array (0: a window the run does not have)."""
        ids = np.fromiter(window_lengths, np.int64, len(window_lengths))
        lengths = np.zeros(int(ids.max(initial=0)) + 1, np.int64)
        lengths[ids] = np.fromiter(window_lengths.values(), np.int64, len(window_lengths))
        return lengths

    def layers_written(self, run_id: str, source: str) -> set[int]:
        """The layers of a run (still running) whose results are written (``put_layer``)."""
        return {r[0] for r in self._q("SELECT DISTINCT layer FROM unit_stats WHERE run_id = ? AND source = ?",
                                      [run_id, source]).fetchall()}

    def _write_layer(self, cur, run_id: str, source: str, s: LayerSummary, window_lengths: np.ndarray) -> None:
        """Insert one LayerSummary: stats, deduplicated records, sample references, token means.
        ``window_lengths``: each window's token count, by window id."""
        N = s.mean.shape[0]
        keys = {"run_id": (run_id, "VARCHAR"), "source": (source, "VARCHAR"), "layer": (s.layer, "SMALLINT")}
        n_bounds = s.quantile_boundaries.shape[0]
        hist = s.hist.astype(np.int32)
        hist_blobs = [zlib.compress(hist[u].tobytes(), 1) for u in range(N)]
        self._insert_arrow(cur, "unit_stats", pa.table({
            "unit": np.arange(N, dtype=np.int32), "n_tokens": pa.array([s.n_tokens] * N, pa.int64()),
            "mean": s.mean.astype(np.float64), "std": s.std.astype(np.float64),
            "skewness": s.skewness.astype(np.float64), "kurtosis": s.kurtosis.astype(np.float64),
            "min": s.vmin.astype(np.float32), "max": s.vmax.astype(np.float32),
            "frac_active": s.frac_active.astype(np.float32), "hist": pa.array(hist_blobs, pa.binary()),
            "quantile_boundaries": pa.ListArray.from_arrays(
                np.arange(0, N * n_bounds + 1, n_bounds, dtype=np.int32),
                pa.array(np.ascontiguousarray(s.quantile_boundaries.T, np.float32).ravel())),
        }), keys)
        # sample rows in this order: top (by rank, then unit), random (by rank), quantile (by bin, then rank)
        r_top, u_top = np.nonzero(s.top_wid >= 0)
        r_rnd, u_rnd = np.nonzero(s.random_idx >= 0)
        b_q, r_q, u_q = np.nonzero(s.quantile_idx >= 0)
        p_rnd, p_q = s.random_idx[r_rnd, u_rnd], s.quantile_idx[b_q, r_q, u_q]
        unit = np.concatenate([u_top, u_rnd, u_q]).astype(np.int32)
        wid = np.concatenate([s.top_wid[r_top, u_top], s.pool_wid[p_rnd, u_rnd], s.pool_wid[p_q, u_q]]).astype(np.int64)
        counts = [len(u_top), len(u_rnd), len(u_q)]
        self._insert_arrow(cur, "samples", pa.table({
            "unit": unit, "kind": np.repeat(np.array(["top", "random", "quantile"]), counts),
            "bin": np.concatenate([np.zeros(counts[0] + counts[1], np.int16), b_q.astype(np.int16)]),
            "rank": np.concatenate([r_top, r_rnd, r_q]).astype(np.int16), "window_id": wid.astype(np.int32),
            "max_act": np.concatenate([s.top_val[r_top, u_top], s.pool_max[p_rnd, u_rnd],
                                       s.pool_max[p_q, u_q]]).astype(np.float32)}), keys)
        # a record per (unit, window), where it is first referenced, its activations cut to the window's length
        _, first = np.unique(unit.astype(np.int64) * (int(wid.max(initial=0)) + 1) + wid, return_index=True)
        first.sort()
        in_pool = first[first >= counts[0]] - counts[0]
        pool_at = np.concatenate([p_rnd, p_q])[in_pool]
        pool_unit = np.concatenate([u_rnd, u_q])[in_pool]
        top = first[first < counts[0]]
        acts = np.concatenate([s.top_acts[r_top[top], u_top[top]], s.pool_acts[pool_at, pool_unit]])
        known = wid[first] < len(window_lengths)
        lengths = np.minimum(window_lengths[np.where(known, wid[first], 0)], acts.shape[1])
        if not (known.all() and (lengths > 0).all()):
            raise ValueError(f"layer {s.layer}: records of windows the run does not have")
        data = acts[np.arange(acts.shape[1])[None, :] < lengths[:, None]]  # each row's first `length` values
        offsets = np.concatenate([[0], np.cumsum(lengths * acts.itemsize)]).astype(np.int32)
        self._insert_arrow(cur, "records", pa.table({
            "unit": unit[first], "window_id": wid[first].astype(np.int32),
            "acts": pa.Array.from_buffers(pa.binary(), len(first), [None, pa.py_buffer(offsets),
                                                                     pa.py_buffer(data.tobytes())])}), keys)
        tm = s.token_means
        if len(tm):
            mean32 = tm.mean.astype(np.float32)
            std = s.std.astype(np.float64)[tm.unit]
            with np.errstate(divide="ignore", invalid="ignore"):  # z: as the search ranks, None for a constant unit
                z = (mean32.astype(np.float64) - s.mean.astype(np.float64)[tm.unit]) / std
            self._insert_arrow(cur, "token_means", pa.table({
                "unit": tm.unit.astype(np.int32), "token_id": tm.token_id.astype(np.int32), "mean": mean32,
                "count": tm.count.astype(np.int32), "z": pa.array(z, mask=~(std != 0))}), keys)

    # ---- reads ---------------------------------------------------------------------------------------------
    def unit_stats(self, run_id: str, unit: UnitId) -> UnitStats | None:
        found = self._stats_and_bounds(run_id, unit.source, unit.layer, [unit.index]).get(unit.index)
        return found[0] if found else None

    def layer_maxima(self, run_id: str, source: str, layer: int, n_units: int) -> np.ndarray:
        """``[n_units]`` float32: each unit's maximum over the run's corpus (NaN where the run has no row)."""
        out = np.full(n_units, np.nan, dtype=np.float32)
        rows = self._q("SELECT unit, max FROM unit_stats WHERE run_id = ? AND source = ? AND layer = ?",
                       [run_id, source, layer]).fetchall()
        for unit, vmax in rows:
            if 0 <= unit < n_units:
                out[unit] = vmax
        return out

    def _stats_and_bounds(self, run_id: str, source: str, layer: int, indices: list[int]
                          ) -> dict[int, tuple[UnitStats, list[float]]]:
        rows = self._q("SELECT unit, n_tokens, mean, std, skewness, kurtosis, min, max, frac_active, hist, "
                       f"quantile_boundaries FROM unit_stats WHERE {UNITS_KEY}",
                       [run_id, source, layer, indices]).fetchall()
        order = hist_order()
        edges = [(float(a), float(b)) for a, b in HIST_BIN_EDGES[order]]
        out = {}
        for row in rows:
            counts = np.frombuffer(zlib.decompress(row[9]), dtype=np.int32)
            stats = UnitStats(n_tokens=row[1], mean=row[2], std=row[3], skewness=row[4], kurtosis=row[5],
                              min=row[6], max=row[7], frac_active=row[8], hist_counts=counts[order].tolist(),
                              hist_edges=list(edges))
            out[row[0]] = stats, [float(x) for x in (row[10] or [])]
        return out

    def token_counts(self, run_id: str) -> dict[int, int]:
        """token id -> its occurrences in the run's windows (the harvested tokens; no BOS), for the ids that occur."""
        return dict(self._q("SELECT t, count(*) FROM (SELECT unnest(token_ids) AS t FROM windows WHERE run_id = ?) "
                            "GROUP BY t", [run_id]).fetchall())

    def unit_record(self, run: RunInfo, unit: UnitId) -> UnitRecord | None:
        """Everything stored about one unit of a run (None if the run does not hold it)."""
        return self.unit_records(run, unit.source, unit.layer, [unit.index]).get(unit.index)

    def unit_records(self, run: RunInfo, source: str, layer: int, indices: list[int]) -> dict[int, UnitRecord]:
        """``unit_record`` of many units of one source and layer in a handful of queries: index -> record, for
        the indices the run holds."""
        indices = sorted(set(indices))
        found = self._stats_and_bounds(run.run_id, source, layer, indices)
        if not found:
            return {}
        tokenizer_id, hook_point = self._q("SELECT tokenizer_id, hook_point FROM models WHERE model_id = ?",
                                           [run.model_id]).fetchone()
        if source != MLP:  # a dictionary's features: its site, in SAELens' naming, and the dictionary
            site = self._q("SELECT site FROM dictionaries WHERE source = ?", [source]).fetchone()
            from analysis.sae.model import hook_name

            hook_point = f"{hook_name(layer, site[0]) if site else f'blocks.{layer}.hook_?'} -> {source}"
        key = [run.run_id, source, layer, sorted(found)]
        rows = self._q(
            "SELECT s.unit, s.kind, s.bin, s.window_id, r.acts FROM samples s "
            "JOIN records r USING (run_id, source, layer, unit, window_id) "
            "WHERE s.run_id = ? AND s.source = ? AND s.layer = ? AND list_contains(?::INTEGER[], s.unit) "
            "ORDER BY s.unit, s.kind, s.bin, s.rank", key).fetchall()
        # a window is in many units' records: its tokens are read and decoded once
        windows = self._q("SELECT window_id, doc_id, token_offset, token_ids FROM windows WHERE run_id = ? AND "
                          "list_contains(?::INTEGER[], window_id)",
                          [run.run_id, sorted({r[3] for r in rows})]).fetchall()
        tok_rows = self._q(
            "SELECT unit, token_id, mean, count FROM (SELECT unit, token_id, mean, count, row_number() OVER "
            f"(PARTITION BY unit ORDER BY mean DESC, token_id) AS n FROM token_means WHERE {UNITS_KEY}) "
            "WHERE n <= 20 ORDER BY unit, mean DESC, token_id", key).fetchall()
        vocab, partial = CatalogRepo(self.con).tokens(
            tokenizer_id, list({t for w in windows for t in w[3]} | {r[1] for r in tok_rows}))
        text = {}  # window id -> (tokens, token ids, runs, doc id, offset)
        for wid, doc_id, offset, token_ids in windows:
            runs = (joined_runs([partial.get(t) or vocab[t].encode("utf-8") for t in token_ids])
                    if any(t in partial for t in token_ids) else ())
            text[wid] = ([vocab.get(t, f"<{t}>") for t in token_ids], token_ids, runs, doc_id, offset)
        samples: dict[int, tuple[list, list, dict]] = {u: ([], [], {}) for u in found}
        for u, kind, b, wid, acts in rows:
            tokens, token_ids, runs, doc_id, offset = text[wid]
            rec = ActivationRecord(tokens=list(tokens), token_ids=list(token_ids), runs=runs,
                                   activations=np.frombuffer(acts, dtype=np.float16).astype(float).tolist(),
                                   window_id=wid, doc_id=doc_id, offset=offset)
            top, rand, by_bin = samples[u]
            if kind == "top":
                top.append(rec)
            elif kind == "random":
                rand.append(rec)
            else:
                by_bin.setdefault(b, []).append(rec)
        top_tokens: dict[int, list] = {u: [] for u in found}
        for u, t, m, c in tok_rows:
            top_tokens[u].append((t, vocab.get(t, f"<{t}>"), float(m), int(c)))
        n_bins = run.params.get("quantile_bins", 0)
        return {u: UnitRecord(
            model_id=run.model_id, corpus_id=run.corpus_id, run_id=run.run_id, unit=UnitId(source, layer, u),
            hook_point=hook_point.format(layer=layer), stats=stats,
            most_positive_activation_records=samples[u][0], random_sample=samples[u][1],
            random_sample_by_quantile=[samples[u][2].get(b, []) for b in range(n_bins)],
            quantile_boundaries=bounds, top_tokens=top_tokens[u],
        ) for u, (stats, bounds) in found.items()}

    def units_for_token(self, run_id: str, token_id: int, limit: int = 20, rank: str = "mean") -> list[UnitOnToken]:
        """The units that fire most on a token. ``rank`` 'mean' orders by the mean activation; 'z' by
        (mean on token − unit mean) / unit std, which does not favour high-variance layers. Candidates are the
        stored ones (each token's top units per layer by mean, each unit's top tokens), so 'z' ranks within
        those."""
        order = "z DESC" if rank == "z" else "mean DESC"
        # z is stored with the row (written with the harvest): no join with every unit's statistics
        rows = self._q(f"SELECT source, layer, unit, mean, count, z FROM token_means WHERE run_id = ? AND token_id = ? "
                       f"ORDER BY {order} NULLS LAST LIMIT ?", [run_id, token_id, limit]).fetchall()
        return [UnitOnToken(UnitId(src, lay, u), m, c, z) for src, lay, u, m, c, z in rows]

    def units_by(self, run_id: str, layer: int, sort: str, limit: int = 25, source: str = MLP) -> list[UnitSummary]:
        """Units of one layer ordered by ``sort`` (a key of SORTS)."""
        rows = self._q(f"SELECT unit, max, mean, std, skewness, kurtosis, frac_active FROM unit_stats "
                       f"WHERE run_id = ? AND source = ? AND layer = ? AND NOT isnan(kurtosis) "
                       f"ORDER BY {SORTS[sort]} LIMIT ?", [run_id, source, layer, limit]).fetchall()
        return [UnitSummary(UnitId(source, layer, r[0]), *r[1:]) for r in rows]
