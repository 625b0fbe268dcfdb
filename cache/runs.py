"""Runs (one harvest of one model over one corpus) and their windows. Every result row carries its run."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pyarrow as pa

from analysis.types import MLP, Window
from cache.db import Repo

_RUN_COLS = ("run_id, model_id, corpus_id, layers, params, n_windows, n_tokens, code_version, status, created_at, "
             "finished_at, source")


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
    source: str = MLP
    """The units it harvested: 'mlp' (neurons) or a dictionary id."""


def _run(row) -> RunInfo:
    return RunInfo(row[0], row[1], row[2], list(row[3]), json.loads(row[4]), *row[5:])


class RunRepo(Repo):
    def list(self, model_id: str | None = None) -> list[RunInfo]:
        """Every run (of one model id), newest first."""
        rows = self._q(f"SELECT {_RUN_COLS} FROM runs" + (" WHERE model_id = ?" if model_id else "")
                       + " ORDER BY created_at DESC", [model_id] if model_id else []).fetchall()
        return [_run(r) for r in rows]

    def get(self, run_id: str) -> RunInfo | None:
        row = self._q(f"SELECT {_RUN_COLS} FROM runs WHERE run_id = ?", [run_id]).fetchone()
        return _run(row) if row else None

    def finished(self, model: str, layers: list[int] | None = None, corpus: str | None = None,
                 source: str | None = MLP) -> list[RunInfo]:
        """Finished runs of a model (by id or name) of one source (None: any) that cover all of ``layers``
        (and are of ``corpus``), newest first."""
        sql = (f"SELECT {', '.join('r.' + c.strip() for c in _RUN_COLS.split(','))} FROM runs r "
               "JOIN models m USING (model_id) WHERE (m.name = $model OR m.model_id = $model) "
               "AND r.status = 'done'")
        args: dict = {"model": model}
        if source is not None:
            sql += " AND r.source = $source"
            args["source"] = source
        if layers:
            sql += " AND list_has_all(r.layers, $layers::INTEGER[])"
            args["layers"] = list(layers)
        if corpus is not None:
            sql += " AND r.corpus_id = $corpus"
            args["corpus"] = corpus
        return [_run(r) for r in self._q(sql + " ORDER BY r.created_at DESC", args).fetchall()]

    def find(self, model: str, layer: int | None = None, corpus: str | None = None,
             source: str = MLP) -> RunInfo | None:
        """The newest finished run of a model (by id or name) that covers ``layer``."""
        runs = self.finished(model, None if layer is None else [layer], corpus, source)
        return runs[0] if runs else None

    def begin(self, run_id: str, model_id: str, corpus_id: str, layers: list[int], params: dict, code_version: str,
              windows_hash: str, windows: list[Window], source: str = MLP) -> None:
        """Register a run (status 'running') and its windows; a no-op if it is already registered."""
        with self.transaction() as cur:
            if cur.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchone():
                return
            cur.execute("INSERT INTO runs (run_id, model_id, corpus_id, layers, params, windows_hash, n_windows, "
                        "n_tokens, code_version, status, created_at, finished_at, source) "
                        "VALUES (?,?,?,?,?,?,?,?,?, 'running', now(), NULL, ?)", [
                            run_id, model_id, corpus_id, layers, json.dumps(params, sort_keys=True), windows_hash,
                            len(windows), sum(len(w.token_ids) for w in windows), code_version, source])
            self._insert_arrow(cur, "windows", pa.table({
                "run_id": [run_id] * len(windows),
                "window_id": pa.array([w.window_id for w in windows], pa.int32()),
                "doc_id": pa.array([w.doc_id for w in windows], pa.int32()),
                "token_offset": pa.array([w.offset for w in windows], pa.int32()),
                "token_ids": pa.array([list(w.token_ids) for w in windows], pa.list_(pa.int32())),
            }))

    def finish(self, run_id: str) -> None:
        """Mark a run done once every layer is written: from now on it is read."""
        with self.transaction() as cur:
            cur.execute("UPDATE runs SET status = 'done', finished_at = now() WHERE run_id = ?", [run_id])

    def sources(self) -> dict[str, list[str]]:
        """model id -> the unit sources of its finished runs ('mlp' first)."""
        out: dict[str, list[str]] = {}
        for model_id, source in self._q("SELECT DISTINCT model_id, source FROM runs WHERE status = 'done' "
                                        "ORDER BY model_id, source != 'mlp', source").fetchall():
            out.setdefault(model_id, []).append(source)
        return out
