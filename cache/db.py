"""The database file: connecting (with the single-writer rule), schema versions, and the base of every
repository.

Concurrency (DuckDB allows one read-write process, or any number of read-only ones, never both at once):
every user of the store holds a connection only for as long as one short piece of work. A harvest computes in
memory (checkpointing to files beside the database, not into it) and opens the file read-write only to
register its run and, at the end, to write its results in one transaction. The viewer opens the file
read-only per page and, if a writer holds it at that moment, retries for a few seconds before saying so.
A connection is not thread-safe: every query takes its own cursor.
"""

from __future__ import annotations

import hashlib
import json
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb

from analysis.types import UserError
from cache.migrations import MIGRATIONS


class StoreError(UserError):
    """The database cannot be used as asked (corrupt, other schema version, busy, read-only folder)."""


def connect(path: Path, read_only: bool, wait_s: float) -> duckdb.DuckDBPyConnection:
    """Open the file, retrying while another process holds the write lock (up to ``wait_s`` seconds)."""
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
    """Apply pending migrations, each in its own transaction; return the new version."""
    version = schema_version(con)
    for number, (_name, sql) in enumerate(MIGRATIONS[version:], start=version + 1):
        con.execute("BEGIN")
        con.execute(sql)
        con.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", [str(number)])
        con.execute("COMMIT")
    return schema_version(con)


def schema_version(con: duckdb.DuckDBPyConnection) -> int:
    """The number of migrations applied (0 for an empty file); refuses a file made by something else."""
    has_meta = con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'meta'").fetchone()[0]
    if not has_meta:
        n_tables = con.execute("SELECT count(*) FROM information_schema.tables").fetchone()[0]
        if n_tables:
            raise StoreError("this DuckDB file was not made by the neuron viewer (it has tables but no 'meta')")
        return 0
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def content_id(*parts) -> str:
    """A stable 16-hex id of JSON-able parts (explanation and simulation ids)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Repo:
    """Base of the repositories: a shared connection, a cursor per query, explicit transactions."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con

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

    @staticmethod
    def _insert_arrow(cur, table: str, data) -> None:
        """Insert a pyarrow table by column name (column order in the file does not matter)."""
        cur.register("_arrow_in", data)
        cur.execute(f"INSERT INTO {table} BY NAME SELECT * FROM _arrow_in")
        cur.unregister("_arrow_in")
