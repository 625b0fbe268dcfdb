"""The DuckDB store: the only place with SQL. Typed methods in, dataclasses out.

Concurrency (DuckDB allows one read-write process, or any number of read-only ones, never both at once):
every user of the store holds a connection only for as long as one short piece of work. A harvest computes in
memory (checkpointing to files beside the database, not into it) and opens the file read-write only to
register its run and, at the end, to write its results in one transaction. The viewer opens the file
read-only per page and, if a writer holds it at that moment, retries for a few seconds before saying so.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from analysis.types import (ActivationRecord, CorpusInfo, Document, MLP, ModelInfo, UnitId, UnitRecord, UnitStats,
                            UserError)
from cache.migrations import MIGRATIONS, SCHEMA_VERSION
from cache.n2g import N2GMixin
from cache.topics import TopicsMixin


class StoreError(UserError):
    """The database cannot be used as asked (corrupt, other schema version, busy, read-only folder)."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    model_id: str
    corpus_id: str
    layers: list[int]
    params: dict
    n_windows: int
    n_tokens: int
    code_version: str
    status: str
    """'running' until the results are written, then 'done'."""
    created_at: object
    finished_at: object


def _connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            msg = str(exc)
            if "lock" in msg.lower() and time.monotonic() < deadline:
                time.sleep(0.2)
                continue
            if "lock" in msg.lower():
                raise StoreError(f"{path} is in use by another process (a harvest writing its results?); "
                                 f"try again in a moment") from None
            raise StoreError(f"{path} is not a readable DuckDB database ({msg.splitlines()[0]}). "
                             "Move it away and rebuild it (e.g. `make demo` for the demo cache).") from None
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations; return the new version."""
    version = _version(con)
    for name, sql in MIGRATIONS[version:]:
        con.execute("BEGIN")
        con.execute(sql)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(MIGRATIONS.index((name, sql)) + 1)])
        con.execute("COMMIT")
    return _version(con)


def _version(con: duckdb.DuckDBPyConnection) -> int:
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
    if not has_meta:
        n_tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0]
        if n_tables:
            raise StoreError("this DuckDB file was not made by the neuron viewer (it has tables but no 'meta')")
        return 0
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class StoredExplanation:
    explanation_id: str
    run_id: str
    layer: int
    unit: int
    explainer: str
    params: dict
    text: str
    created_at: object


@dataclass(frozen=True)
class StoredSimulation:
    simulation_id: str
    explanation_id: str
    simulator: str
    params: dict
    scoring_set: str
    window_ids: list[int]
    simulated: list[list[float]] | None
    score: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    error: str | None
    created_at: object


def _id(*parts) -> str:
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class ExplanationsMixin:
    """Explanations and scored simulations (methods of Store)."""

    def put_explanation(self, run_id: str, layer: int, unit: int, explainer: str, params: dict, text: str) -> str:
        eid = _id(run_id, layer, unit, explainer, params, text)
        with self.transaction() as cur:
            cur.execute("INSERT OR IGNORE INTO explanations VALUES (?,?,?,?,?,?,?, now())",
                        [eid, run_id, layer, unit, explainer, json.dumps(params, sort_keys=True), text])
        return eid

    def explanations(self, run_id: str, layer: int, unit: int | None = None) -> list[StoredExplanation]:
        sql = "SELECT * FROM explanations WHERE run_id = ? AND layer = ?"
        args = [run_id, layer]
        if unit is not None:
            sql += " AND unit = ?"
            args.append(unit)
        rows = self._q(sql + " ORDER BY unit, created_at", args).fetchall()
        return [StoredExplanation(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]), r[6], r[7]) for r in rows]

    def put_simulation(self, explanation_id: str, sim) -> str:
        """Store an analysis.evaluate.ScoredSimulation (replacing an earlier one with the same key)."""
        sid = _id(explanation_id, sim.simulator, sim.params, sim.scoring_set)
        with self.transaction() as cur:
            cur.execute("DELETE FROM simulations WHERE simulation_id = ?", [sid])
            cur.execute("INSERT INTO simulations VALUES (?,?,?,?,?,?,?,?,?,?,?, now())", [
                sid, explanation_id, sim.simulator, json.dumps(sim.params, sort_keys=True), sim.scoring_set,
                sim.window_ids, json.dumps(sim.simulated) if sim.simulated is not None else None,
                sim.score, sim.rsquared, sim.absolute_dev_explained, sim.error])
        return sid

    def simulations(self, explanation_id: str) -> list[StoredSimulation]:
        rows = self._q("SELECT * FROM simulations WHERE explanation_id = ? ORDER BY created_at",
                       [explanation_id]).fetchall()
        return [StoredSimulation(r[0], r[1], r[2], json.loads(r[3]), r[4], list(r[5]),
                                 json.loads(r[6]) if r[6] else None, *r[7:]) for r in rows]

    def has_simulation(self, explanation_id: str, simulator: str, scoring_set: str) -> bool:
        return self._q("SELECT 1 FROM simulations WHERE explanation_id = ? AND simulator = ? AND scoring_set = ? "
                       "AND error IS NULL", [explanation_id, simulator, scoring_set]).fetchone() is not None

    def layer_scores(self, run_id: str, layer: int | None = None) -> list[tuple]:
        """(layer, unit, explainer, simulator, scoring_set, score) of every successful scored simulation."""
        sql = ("SELECT e.layer, e.unit, e.explainer, s.simulator, s.scoring_set, s.score FROM simulations s "
               "JOIN explanations e USING (explanation_id) WHERE e.run_id = ? AND s.error IS NULL")
        args = [run_id]
        if layer is not None:
            sql += " AND e.layer = ?"
            args.append(layer)
        return self._q(sql, args).fetchall()


class Store(ExplanationsMixin, N2GMixin, TopicsMixin):
    """One open connection to the database. Use ``open_store`` to get one; close it soon."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool):
        self.con = con
        self.path = path
        self.read_only = read_only

    def close(self) -> None:
        self.con.close()

    def _q(self, sql: str, params: list | dict | None = None):
        return self.con.cursor().execute(sql, params or [])

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        cur = self.con.cursor()
        cur.execute("BEGIN TRANSACTION")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    # ---- models, corpora, vocab -------------------------------------------------------------------------
    def put_model(self, info: ModelInfo, vocab: list[str]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO models VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [
                info.model_id, info.name, info.source, info.architecture, info.n_layers, info.d_mlp, info.hook_point,
                info.act_fn, info.gated, info.weights_hash, info.tokenizer_id, info.prepend_bos])
            have = cur.execute("SELECT count(*) FROM vocab WHERE tokenizer_id = ?", [info.tokenizer_id]).fetchone()[0]
            if have != len(vocab):
                cur.execute("DELETE FROM vocab WHERE tokenizer_id = ?", [info.tokenizer_id])
                table = pa.table({"tokenizer_id": [info.tokenizer_id] * len(vocab),
                                  "token_id": np.arange(len(vocab), dtype=np.int32), "token": vocab})
                cur.register("vocab_in", table)
                cur.execute("INSERT INTO vocab SELECT * FROM vocab_in")
                cur.unregister("vocab_in")

    def put_corpus(self, info: CorpusInfo, documents: list[Document]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO corpora VALUES (?,?,?,?,?,?)", [
                info.corpus_id, info.name, info.source, info.text_hash, info.n_docs, info.n_chars])
            cur.execute("DELETE FROM documents WHERE corpus_id = ?", [info.corpus_id])
            table = pa.table({"corpus_id": [info.corpus_id] * len(documents),
                              "doc_id": [d.doc_id for d in documents], "title": [d.title for d in documents]})
            cur.register("docs_in", table)
            cur.execute("INSERT INTO documents SELECT * FROM docs_in")
            cur.unregister("docs_in")

    _MODEL_COLS = ("name, model_id, source, architecture, n_layers, d_mlp, hook_point, act_fn, gated, weights_hash, "
                   "tokenizer_id, prepend_bos")

    def models(self) -> list[ModelInfo]:
        rows = self._q(f"SELECT {self._MODEL_COLS} FROM models ORDER BY model_id").fetchall()
        return [ModelInfo(*r) for r in rows]

    def model(self, model: str) -> ModelInfo | None:
        """A model by id or by the name it was harvested under (newest weights first)."""
        row = self._q(f"SELECT {self._MODEL_COLS} FROM models WHERE model_id = ? OR name = ? ORDER BY model_id LIMIT 1",
                      [model, model]).fetchone()
        return ModelInfo(*row) if row else None

    def corpora(self) -> list[CorpusInfo]:
        return [CorpusInfo(*r) for r in self._q("SELECT * FROM corpora ORDER BY corpus_id").fetchall()]

    def vocab(self, tokenizer_id: str, token_ids: list[int] | None = None) -> dict[int, str]:
        if token_ids is None:
            rows = self._q("SELECT token_id, token FROM vocab WHERE tokenizer_id = ?", [tokenizer_id]).fetchall()
        else:
            rows = self._q("SELECT token_id, token FROM vocab WHERE tokenizer_id = ? AND token_id IN "
                           "(SELECT unnest(?::INTEGER[]))", [tokenizer_id, sorted(set(token_ids))]).fetchall()
        return dict(rows)

    # ---- runs ----------------------------------------------------------------------------------------------
    def runs(self, model_id: str | None = None) -> list[RunInfo]:
        sql = ("SELECT run_id, model_id, corpus_id, layers, params, n_windows, n_tokens, code_version, status, "
               "created_at, finished_at FROM runs")
        rows = self._q(sql + (" WHERE model_id = ?" if model_id else "") + " ORDER BY created_at DESC",
                       [model_id] if model_id else []).fetchall()
        return [RunInfo(r[0], r[1], r[2], list(r[3]), json.loads(r[4]), *r[5:]) for r in rows]

    def run(self, run_id: str) -> RunInfo | None:
        return next((r for r in self.runs() if r.run_id == run_id), None)

    def begin_run(self, run_id: str, model_id: str, corpus_id: str, layers: list[int], params: dict,
                  windows_hash: str, windows: list, code_version: str) -> None:
        """Register a run and its windows (status 'running'); a no-op if it is already registered."""
        with self.transaction() as cur:
            if cur.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
                return
            cur.execute("INSERT INTO runs VALUES (?,?,?,?,?,?,?,?,?, 'running', now(), NULL)", [
                run_id, model_id, corpus_id, layers, json.dumps(params, sort_keys=True), windows_hash,
                len(windows), sum(len(w.token_ids) for w in windows), code_version])
            table = pa.table({
                "run_id": [run_id] * len(windows),
                "window_id": pa.array([w.window_id for w in windows], pa.int32()),
                "doc_id": pa.array([w.doc_id for w in windows], pa.int32()),
                "token_offset": pa.array([w.offset for w in windows], pa.int32()),
                "token_ids": pa.array([list(w.token_ids) for w in windows], pa.list_(pa.int32())),
            })
            cur.register("win_in", table)
            cur.execute("INSERT INTO windows SELECT * FROM win_in")
            cur.unregister("win_in")

    def put_results(self, run_id: str, summaries: list, window_lengths: dict[int, int]) -> None:
        """Write a finished harvest (analysis.harvest.LayerSummary per layer) in one transaction."""
        with self.transaction() as cur:
            for table in ("unit_stats", "records", "samples", "token_means"):
                cur.execute(f"DELETE FROM {table} WHERE run_id = ?", [run_id])
            for s in summaries:
                _write_layer(cur, run_id, s, window_lengths)
            cur.execute("UPDATE runs SET status = 'done', finished_at = now() WHERE run_id = ?", [run_id])

    def find_run(self, model: str, layer: int | None = None, corpus: str | None = None) -> RunInfo | None:
        """The newest finished run of a model (by id or name) that covers ``layer``."""
        ids = [m.model_id for m in self.models() if m.name == model or m.model_id == model]
        if not ids:
            return None
        for run in self.runs():
            if run.model_id in ids and run.status == "done" and (layer is None or layer in run.layers) \
                    and (corpus is None or run.corpus_id == corpus):
                return run
        return None

    def corpus_arg_for(self, model: str) -> str:
        """The --corpus argument that reproduces the corpus of this model's newest run (default: enwiki-sample)."""
        ids = {m.model_id for m in self.models() if m.name == model or m.model_id == model}
        for run in self.runs():
            if run.model_id in ids:
                row = self._q("SELECT name, source FROM corpora WHERE corpus_id = ?", [run.corpus_id]).fetchone()
                if row:
                    return row[0] if row[1] == "embedded" else row[1]
        return "enwiki-sample"

    # ---- units -------------------------------------------------------------------------------------------
    def unit_stats(self, run_id: str, layer: int, unit: int) -> UnitStats | None:
        found = self._unit_stats_and_bounds(run_id, layer, unit)
        return found[0] if found else None

    def _unit_stats_and_bounds(self, run_id: str, layer: int, unit: int) -> tuple[UnitStats, list[float]] | None:
        row = self._q("SELECT n_tokens, mean, std, skewness, kurtosis, min, max, frac_active, hist, quantile_boundaries "
                      "FROM unit_stats WHERE run_id = ? AND layer = ? AND unit = ?", [run_id, layer, unit]).fetchone()
        if row is None:
            return None
        counts = np.frombuffer(zlib.decompress(row[8]), dtype=np.int32)
        from analysis.harvest import HIST_BIN_EDGES, hist_order

        order = hist_order()
        stats = UnitStats(n_tokens=row[0], mean=row[1], std=row[2], skewness=row[3], kurtosis=row[4], min=row[5],
                          max=row[6], frac_active=row[7], hist_counts=counts[order].tolist(),
                          hist_edges=[(float(a), float(b)) for a, b in HIST_BIN_EDGES[order]])
        return stats, [float(x) for x in (row[9] or [])]

    def neuron_record(self, run: RunInfo, layer: int, unit: int) -> UnitRecord | None:
        found = self._unit_stats_and_bounds(run.run_id, layer, unit)
        if found is None:
            return None
        stats, bounds = found
        model = self.model(run.model_id)
        rows = self._q(
            "SELECT s.kind, s.bin, s.rank, s.window_id, r.acts, w.doc_id, w.token_offset, w.token_ids "
            "FROM samples s JOIN records r USING (run_id, layer, unit, window_id) "
            "JOIN windows w ON w.run_id = s.run_id AND w.window_id = s.window_id "
            "WHERE s.run_id = ? AND s.layer = ? AND s.unit = ? ORDER BY s.kind, s.bin, s.rank",
            [run.run_id, layer, unit]).fetchall()
        vocab = self.vocab(model.tokenizer_id, [t for r in rows for t in r[7]])
        top, rand, by_bin = [], [], {}
        for kind, b, _rank, wid, acts, doc_id, offset, token_ids in rows:
            rec = ActivationRecord(tokens=[vocab.get(t, f"<{t}>") for t in token_ids], token_ids=list(token_ids),
                                   activations=np.frombuffer(acts, dtype=np.float16).astype(float).tolist(),
                                   window_id=wid, doc_id=doc_id, offset=offset)
            if kind == "top":
                top.append(rec)
            elif kind == "random":
                rand.append(rec)
            else:
                by_bin.setdefault(b, []).append(rec)
        n_bins = run.params.get("quantile_bins", 0)
        tok_rows = self._q("SELECT token_id, mean, count FROM token_means WHERE run_id = ? AND layer = ? AND unit = ? "
                           "ORDER BY mean DESC LIMIT 20", [run.run_id, layer, unit]).fetchall()
        tok_vocab = self.vocab(model.tokenizer_id, [r[0] for r in tok_rows])
        return UnitRecord(
            model_id=run.model_id, corpus_id=run.corpus_id, run_id=run.run_id, unit=UnitId(MLP, layer, unit),
            hook_point=model.hook_point.format(layer=layer), stats=stats,
            most_positive_activation_records=top, random_sample=rand,
            random_sample_by_quantile=[by_bin.get(b, []) for b in range(n_bins)],
            quantile_boundaries=bounds,
            top_tokens=[(t, tok_vocab.get(t, f"<{t}>"), float(m), int(c)) for t, m, c in tok_rows],
        )

    def neurons_for_token(self, run_id: str, token_id: int, limit: int = 20, rank: str = "mean") -> list[tuple]:
        """(layer, unit, mean activation on the token, count, z) of the units that fire most on a token.

        ``rank`` 'mean' orders by the mean activation; 'z' by (mean on token − unit mean) / unit std, which does
        not favour high-variance layers. Candidates are the stored ones (each token's top units per layer by mean,
        each unit's top tokens), so 'z' ranks within those."""
        order = "z DESC" if rank == "z" else "t.mean DESC"
        return self._q(f"SELECT t.layer, t.unit, t.mean, t.count, (t.mean - u.mean) / nullif(u.std, 0) AS z "
                       f"FROM token_means t JOIN unit_stats u USING (run_id, layer, unit) "
                       f"WHERE t.run_id = ? AND t.token_id = ? ORDER BY {order} NULLS LAST LIMIT ?",
                       [run_id, token_id, limit]).fetchall()

    def token_ids(self, tokenizer_id: str, text: str) -> list[tuple[int, str]]:
        """Vocabulary entries equal to ``text``, also with a leading space (' Paris' for 'Paris')."""
        variants = [text, " " + text.lstrip(" ")] if not text.startswith(" ") else [text, text.lstrip(" ")]
        return self._q("SELECT token_id, token FROM vocab WHERE tokenizer_id = ? AND token IN (SELECT unnest(?::VARCHAR[])) "
                       "ORDER BY token_id", [tokenizer_id, variants]).fetchall()

    SORTS = {"max": "max DESC", "kurtosis": "kurtosis DESC", "skewness": "skewness DESC",
             "sparsest": "frac_active ASC", "densest": "frac_active DESC", "min": "min ASC"}

    def units_by(self, run_id: str, layer: int, sort: str, limit: int = 25) -> list[tuple]:
        """(unit, max, mean, std, skewness, kurtosis, frac_active) of one layer, ordered by ``sort`` (see SORTS)."""
        order = self.SORTS[sort]
        return self._q(f"SELECT unit, max, mean, std, skewness, kurtosis, frac_active FROM unit_stats "
                       f"WHERE run_id = ? AND layer = ? AND NOT isnan(kurtosis) ORDER BY {order} LIMIT ?",
                       [run_id, layer, limit]).fetchall()


def _write_layer(cur, run_id: str, s, window_lengths: dict[int, int]) -> None:
    """Insert one LayerSummary: stats, deduplicated records, sample references, token means."""
    N = s.mean.shape[0]
    units = np.arange(N, dtype=np.int32)
    hist_blobs = [zlib.compress(s.hist[u].astype(np.int32).tobytes(), 1) for u in range(N)]
    stats = pa.table({
        "run_id": [run_id] * N, "layer": pa.array([s.layer] * N, pa.int16()), "unit": units,
        "n_tokens": pa.array([s.n_tokens] * N, pa.int64()),
        "mean": s.mean.astype(np.float64), "std": s.std.astype(np.float64),
        "skewness": s.skewness.astype(np.float64), "kurtosis": s.kurtosis.astype(np.float64),
        "min": s.vmin.astype(np.float32), "max": s.vmax.astype(np.float32),
        "frac_active": s.frac_active.astype(np.float32),
        "hist": pa.array(hist_blobs, pa.binary()),
        "quantile_boundaries": pa.array([s.quantile_boundaries[:, u].astype(np.float32).tolist() for u in range(N)],
                                        pa.list_(pa.float32())),
    })
    cur.register("stats_in", stats)
    cur.execute("INSERT INTO unit_stats SELECT * FROM stats_in")
    cur.unregister("stats_in")

    rec_unit, rec_wid, rec_acts = [], [], []
    seen: set[tuple[int, int]] = set()
    smp = {"unit": [], "kind": [], "bin": [], "rank": [], "window_id": [], "max_act": []}

    def add(kind: str, b: int, rank: int, u: int, wid: int, mx: float, acts_row: np.ndarray) -> None:
        smp["unit"].append(u); smp["kind"].append(kind); smp["bin"].append(b); smp["rank"].append(rank)
        smp["window_id"].append(wid); smp["max_act"].append(mx)
        if (u, wid) not in seen:
            seen.add((u, wid))
            rec_unit.append(u); rec_wid.append(wid)
            rec_acts.append(acts_row[: window_lengths[wid]].tobytes())

    for rank in range(s.top_wid.shape[0]):
        for u in np.nonzero(s.top_wid[rank] >= 0)[0]:
            add("top", 0, rank, int(u), int(s.top_wid[rank, u]), float(s.top_val[rank, u]), s.top_acts[rank, u])
    for rank in range(s.random_idx.shape[0]):
        for u in np.nonzero(s.random_idx[rank] >= 0)[0]:
            p = s.random_idx[rank, u]
            add("random", 0, rank, int(u), int(s.pool_wid[p, u]), float(s.pool_max[p, u]), s.pool_acts[p, u])
    for b in range(s.quantile_idx.shape[0]):
        for rank in range(s.quantile_idx.shape[1]):
            for u in np.nonzero(s.quantile_idx[b, rank] >= 0)[0]:
                p = s.quantile_idx[b, rank, u]
                add("quantile", b, rank, int(u), int(s.pool_wid[p, u]), float(s.pool_max[p, u]), s.pool_acts[p, u])
    recs = pa.table({"run_id": [run_id] * len(rec_unit), "layer": pa.array([s.layer] * len(rec_unit), pa.int16()),
                     "unit": pa.array(rec_unit, pa.int32()), "window_id": pa.array(rec_wid, pa.int32()),
                     "acts": pa.array(rec_acts, pa.binary())})
    cur.register("recs_in", recs)
    cur.execute("INSERT INTO records SELECT * FROM recs_in")
    cur.unregister("recs_in")
    n = len(smp["unit"])
    samples = pa.table({"run_id": [run_id] * n, "layer": pa.array([s.layer] * n, pa.int16()),
                        "unit": pa.array(smp["unit"], pa.int32()), "kind": smp["kind"],
                        "bin": pa.array(smp["bin"], pa.int16()), "rank": pa.array(smp["rank"], pa.int16()),
                        "window_id": pa.array(smp["window_id"], pa.int32()),
                        "max_act": pa.array(smp["max_act"], pa.float32())})
    cur.register("smp_in", samples)
    cur.execute("INSERT INTO samples SELECT * FROM smp_in")
    cur.unregister("smp_in")
    if s.token_means:
        u, t, m, c = zip(*s.token_means)
        tm = pa.table({"run_id": [run_id] * len(u), "layer": pa.array([s.layer] * len(u), pa.int16()),
                       "unit": pa.array(u, pa.int32()), "token_id": pa.array(t, pa.int32()),
                       "mean": pa.array(m, pa.float32()), "count": pa.array(c, pa.int32())})
        cur.register("tm_in", tm)
        cur.execute("INSERT INTO token_means SELECT * FROM tm_in")
        cur.unregister("tm_in")


@contextmanager
def open_store(path: str | Path, read_only: bool = False, wait_s: float = 10.0) -> Iterator[Store]:
    """Open the database for one short piece of work.

    Read-write: creates the file (and schema) if missing; refuses a file of another schema version (run
    ``python -m analysis migrate --db PATH`` for an older one). Read-only: the file must exist.
    """
    path = Path(path).expanduser().resolve()
    if read_only and not path.exists():
        raise StoreError(f"no database at {path}: build one with `make demo` or `python -m analysis harvest --db {path}`")
    if not read_only:
        folder = path.parent
        if not folder.exists():
            try:
                folder.mkdir(parents=True)
            except OSError as exc:
                raise StoreError(f"cannot create folder {folder} for the database: {exc.strerror}") from None
        if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
            raise StoreError(f"cannot write the database at {path}: the folder or file is read-only")
    con = _connect(path, read_only, wait_s)
    try:
        version = _version(con)
        if version == 0 and not read_only:
            version = migrate(con)
        if version != SCHEMA_VERSION:
            hint = ("run `python -m analysis migrate --db {}`".format(path) if version < SCHEMA_VERSION
                    else "it was written by a newer version of this project: update the code")
            raise StoreError(f"{path} has schema version {version}, this code reads version {SCHEMA_VERSION}: {hint}")
        yield Store(con, path, read_only)
    finally:
        con.close()


def migrate_file(path: str | Path) -> tuple[int, int]:
    """Bring a database file to the current schema; returns (old version, new version)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise StoreError(f"no database at {path}")
    con = _connect(path, False, 10.0)
    try:
        old = _version(con)
        if old > SCHEMA_VERSION:
            raise StoreError(f"{path} has schema version {old}, newer than this code ({SCHEMA_VERSION})")
        return old, migrate(con)
    finally:
        con.close()
