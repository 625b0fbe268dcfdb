"""The DuckDB store: the only place with SQL. Typed methods in, dataclasses out.

``open_store(path)`` opens the file for one short piece of work and gives a ``Store``, whose repositories
share its connection, one per table family:

    store.catalog       models, vocabularies, corpora               (cache/catalog.py)
    store.runs          runs and their windows                      (cache/runs.py)
    store.records       harvest results: stats, records, token table (cache/records.py)
    store.explanations  explanations and scored simulations         (cache/explanations.py)
    store.graphs        Neuron2Graph graphs                         (cache/graphs.py)
    store.topics        word-pool topics                            (cache/topics.py)
    store.lists         named lists of units with notes             (cache/lists.py)
    store.effects       the causal lens' ablation summaries         (cache/effects.py)
    store.scores        score distributions, summed up in SQL       (cache/scores.py)

Schema: ``cache/migrations.py`` (append-only); connecting, versions and the concurrency rules: ``cache/db.py``.
Nothing here imports torch: reading a record needs no model.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import duckdb

from analysis.types import MLP, UnitRecord

from cache.catalog import CatalogRepo
from cache.db import StoreError, connect, migrate, schema_version, shared_reader, writer_intent
from cache.explanations import ExplanationRepo
from cache.effects import EffectRepo
from cache.graphs import GraphRepo
from cache.lists import ListRepo
from cache.migrations import SCHEMA_VERSION
from cache.records import RecordRepo
from cache.runs import RunRepo
from cache.scorer_results import ScorerResultRepo
from cache.scores import ScoreRepo
from cache.topics import TopicRepo

__all__ = ["Store", "StoreError", "UnitGlance", "open_store", "migrate", "migrate_file"]


@dataclass(frozen=True)
class UnitGlance:
    """What every lens in the cache says about one unit, in one read (the unit page's header, a static page)."""

    best: tuple | None
    """(StoredExplanation, StoredSimulation) of the best-scored text explanation, or None."""
    n_explanations: int
    baselines: list
    """The unit's StoredBaselines."""
    graph: dict | None
    """The stored graph's metrics (firing / baseline_firing P/R/F1), or None."""
    n_topic_sets: int
    topic: object | None
    """cache.topics.BestTopic, or None."""
    effects: object | None
    """cache.effects.StoredEffects (the ablation summary), or None."""
    effect_tokens: dict
    """Token id -> text of the tokens its effects name."""
    top_tokens: list[str]
    density: float
    neuron: bool
    """An MLP neuron (the graph lens probes neurons only)."""


class Store:
    """One open connection to the database and its repositories. Use ``open_store`` to get one; close it soon."""

    def __init__(self, con: duckdb.DuckDBPyConnection, path: Path, read_only: bool, version: tuple | None = None):
        self.con, self.path, self.read_only = con, path, read_only
        # for a shared read, the file's state its connection sees (what it reads cannot change while this store
        # is open: a reader may key caches on it); None otherwise
        self.version = version
        self.catalog = CatalogRepo(con)
        self.runs = RunRepo(con)
        self.records = RecordRepo(con)
        self.explanations = ExplanationRepo(con)
        self.graphs = GraphRepo(con)
        self.topics = TopicRepo(con)
        self.lists = ListRepo(con)
        self.effects = EffectRepo(con)
        self.scores = ScoreRepo(con)
        self.scorer_results = ScorerResultRepo(con)

    def glance(self, model_id: str, rec: UnitRecord) -> UnitGlance:
        unit = rec.unit
        graph = self.graphs.get(rec.run_id, unit)
        n_sets, topic = self.topics.best_of(model_id, unit)
        rows = self.explanations.with_simulations(rec.run_id, unit)
        effects = self.effects.get(rec.run_id, unit)
        names = {}
        if effects is not None:
            names = self.catalog.vocab(self.catalog.model(model_id).tokenizer_id,
                                       [t for t, _v in effects.promoted + effects.suppressed])
        return UnitGlance(best=self.explanations.best(rec.run_id, unit, rows), n_explanations=len(rows),
                          baselines=self.explanations.baselines(rec.run_id, unit),
                          graph=graph.metrics if graph else None, n_topic_sets=n_sets, topic=topic,
                          effects=effects, effect_tokens=names,
                          top_tokens=[t for _i, t, _m, _c in rec.top_tokens], density=rec.stats.frac_active,
                          neuron=unit.source == MLP)


@contextmanager
def open_store(path: str | Path, read_only: bool = False, wait_s: float = 10.0, shared: bool = False
               ) -> Iterator[Store]:
    """Open the database for one short piece of work.

    Read-write: creates the file (and schema) if missing; refuses a file of another schema version (run
    ``python -m analysis migrate --db PATH`` for an older one); announces itself to shared readers first.
    Read-only: the file must exist; ``shared`` reads through the process's one shared connection to it (the
    viewer: see cache/db.py).
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
    if read_only and shared:
        pool = shared_reader(path)
        with pool.connection(wait_s) as con:
            if not pool.checked:  # once per opening (shared: every query on its own cursor)
                _check_version(con.cursor(), path, read_only)
                pool.checked = True
            yield Store(con, path, read_only, version=pool.key)
        return
    with (writer_intent(path) if not read_only else nullcontext()):
        con = connect(path, read_only, wait_s)
        try:
            _check_version(con, path, read_only)
            yield Store(con, path, read_only)
        finally:
            con.close()


def _check_version(con, path: Path, read_only: bool) -> None:
    version = schema_version(con)
    if version == 0 and not read_only:
        version = migrate(con)
    if version != SCHEMA_VERSION:
        hint = (f"run `python -m analysis migrate --db {path}`" if version < SCHEMA_VERSION
                else "it was written by a newer version of this project: update the code")
        raise StoreError(f"{path} has schema version {version}, this code reads version {SCHEMA_VERSION}: {hint}")


def migrate_file(path: str | Path) -> tuple[int, int]:
    """Bring a database file to the current schema in place; returns (old version, new version)."""
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise StoreError(f"no database at {path}")
    with writer_intent(path):
        con = connect(path, False, 10.0)
        try:
            old = schema_version(con)
            if old > SCHEMA_VERSION:
                raise StoreError(f"{path} has schema version {old}, newer than this code ({SCHEMA_VERSION})")
            return old, migrate(con)
        finally:
            con.close()
