"""The database file: connecting (with the single-writer rule), schema versions, and the base of every
repository.

Concurrency (DuckDB allows one read-write process, or any number of read-only ones, never both at once):
every user of the store holds a connection only for as long as one short piece of work. A harvest computes in
memory (checkpointing to files beside the database, not into it) and opens the file read-write only to
register its run and, at the end, to write its results in one transaction. The viewer's reads share one read-only connection per file
(``SharedReader``: no reopening per page, DuckDB's buffers stay warm), which it drops whenever the file changes
(a read-only connection does not see another process's writes) and whenever a writer announces itself: a writer
first writes its process id into ``<db>.writer`` (``writer_intent``), readers then finish, close and wait, the
writer gets the lock, writes, and removes the file. A reader that waits longer than a few seconds says the
database is busy. A connection is not thread-safe: every query takes its own cursor.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import threading
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
            # a reader's queries are small: one thread (no per-connection pool of worker threads to start)
            return duckdb.connect(str(path), read_only=read_only, config={"threads": 1} if read_only else {})
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
        except duckdb.ConnectionException as exc:
            # this process still has the file open the other way (a reader while a job in another session
            # writes, or the reverse): wait for that connection to close, as for another process's lock
            if "different configuration" in str(exc) and time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise StoreError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None
        except duckdb.Error as exc:
            raise StoreError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None


def intent_path(path: Path) -> Path:
    return path.with_name(path.name + ".writer")


def writer_waiting(path: Path) -> bool:
    """Whether a live process (this one included) has announced that it wants to write the file."""
    try:
        pid = int(intent_path(path).read_text())
    except (OSError, ValueError):
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:  # a writer that died: its announcement does not count
        return False
    except PermissionError:
        pass
    return True


@contextmanager
def writer_intent(path: Path) -> Iterator[None]:
    """Announce a writer for as long as the block runs (readers sharing a connection let go of the file)."""
    mark = intent_path(path)
    try:
        mark.write_text(str(os.getpid()))
    except OSError:  # a read-only folder: the write itself will say so
        pass
    pool = _SHARED.get(path)
    try:
        if pool is not None:
            pool.let_go()
        yield
    finally:
        try:
            if mark.read_text() == str(os.getpid()):
                mark.unlink()
        except (OSError, ValueError):
            pass


def _file_key(path: Path) -> tuple:
    """Changes whenever another process writes the file (or its write-ahead log)."""
    keys = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            keys.append((st.st_mtime_ns, st.st_size))
        except OSError:
            keys.append(None)
    return tuple(keys)


class SharedReader:
    """One read-only connection to a file, shared by a process's threads (the viewer's sessions; each query takes
    its own cursor), reopened after the file changed and closed while a writer waits (module doc)."""

    IDLE_S = 2.0
    """An unused connection is closed after this long (nobody is reading: the file is left alone)."""

    def __init__(self, path: Path):
        self.path, self.con, self.key, self.users, self.last_used = path, None, None, 0, 0.0
        self.checked = False  # whether the open connection's schema version was checked
        self.openings = 0
        self.cond = threading.Condition()

    def _watch(self, opening: int) -> None:
        """While the connection of this ``opening`` is open: close it when unused and a writer waits, or after
        IDLE_S unused. (It holds no reference to the connection: at exit nothing keeps one alive.)"""
        while True:
            time.sleep(0.25)
            with self.cond:
                if self.con is None or self.openings != opening:
                    return
                if self.users == 0 and (writer_waiting(self.path) or time.monotonic() - self.last_used > self.IDLE_S):
                    self._close_if_unused()
                    return

    def _close_if_unused(self) -> None:
        if self.con is not None and self.users == 0:
            self.con.close()
            self.con = None

    @contextmanager
    def connection(self, wait_s: float) -> Iterator[duckdb.DuckDBPyConnection]:
        deadline = time.monotonic() + wait_s
        with self.cond:
            while True:
                key, waiting = _file_key(self.path), writer_waiting(self.path)
                if waiting or (self.con is not None and key != self.key):
                    self._close_if_unused()
                    if self.con is None and not waiting:
                        continue
                    if time.monotonic() > deadline:
                        raise StoreError(f"{self.path} is in use by another process (a harvest writing its "
                                         "results?); try again in a moment")
                    self.cond.wait(0.1)
                    continue
                if self.con is None:
                    self.con, self.key = connect(self.path, True, max(0.0, deadline - time.monotonic())), key
                    self.checked, self.openings = False, self.openings + 1
                    threading.Thread(target=self._watch, args=(self.openings,), name="shared-reader-watch",
                                     daemon=True).start()
                self.users += 1
                con = self.con
                break
        try:
            yield con
        finally:
            with self.cond:
                self.users -= 1
                self.last_used = time.monotonic()
                if writer_waiting(self.path):
                    self._close_if_unused()
                self.cond.notify_all()

    def let_go(self, wait_s: float = 30.0) -> None:
        """Close the connection as soon as its readers finish (a writer in this process is about to connect)."""
        deadline = time.monotonic() + wait_s
        with self.cond:
            while self.con is not None and self.users and time.monotonic() < deadline:
                self.cond.wait(0.1)
            self._close_if_unused()


_SHARED: dict[Path, SharedReader] = {}
_SHARED_LOCK = threading.Lock()


@atexit.register
def _close_shared() -> None:
    for pool in list(_SHARED.values()):
        with pool.cond:
            if pool.con is not None:
                pool.con.close()
                pool.con = None


def shared_reader(path: Path) -> SharedReader:
    with _SHARED_LOCK:
        return _SHARED.setdefault(path, SharedReader(path))


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
    try:  # the common case, without a look at the catalog
        row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        if row:
            return int(row[0])
    except duckdb.CatalogException:
        pass
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


def vector_column(vectors, n: int):
    """``[n, dim]`` float vectors (any array-like) as one Arrow list column (a ``FLOAT[]`` column's rows)."""
    import numpy as np
    import pyarrow as pa

    flat = np.asarray(vectors, dtype=np.float32).reshape(n, -1)
    return pa.ListArray.from_arrays(np.arange(n + 1, dtype=np.int32) * flat.shape[1], pa.array(flat.ravel()))


def vector_matrix(column, n: int):
    """A ``FLOAT[]`` column of ``n`` rows read as Arrow back into an ``[n, dim]`` float32 matrix."""
    import numpy as np

    flat = column.combine_chunks().flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return flat.reshape(n, -1 if n else 0)


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
    def _insert_arrow(cur, table: str, data, consts: dict | None = None) -> None:
        """Insert a pyarrow table by column name (column order in the file does not matter); ``consts``: columns
        that hold one value in every row (column name -> (value, SQL type)), given once instead of per row."""
        consts = consts or {}
        extra = "".join(f", ${i + 1}::{sql_type} AS {name}" for i, (name, (_v, sql_type)) in enumerate(consts.items()))
        cur.register("_arrow_in", data)
        cur.execute(f"INSERT INTO {table} BY NAME SELECT *{extra} FROM _arrow_in", [v for v, _t in consts.values()])
        cur.unregister("_arrow_in")
