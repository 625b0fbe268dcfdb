"""The DuckDB store: migrations, refusal of bad files, single-writer behaviour."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import pytest

from cache.migrations import SCHEMA_VERSION
from cache.store import StoreError, migrate, open_store


def test_migrations_build_the_schema_in_memory():
    con = duckdb.connect()
    assert migrate(con) == SCHEMA_VERSION
    tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
    assert {"meta", "models", "vocab", "corpora", "runs", "windows", "unit_stats", "records", "samples",
            "token_means"} <= tables
    assert migrate(con) == SCHEMA_VERSION  # idempotent


def test_new_file_gets_schema_and_other_versions_are_refused(tmp_path):
    db = tmp_path / "a.duckdb"
    with open_store(db) as store:
        assert store.catalog.models() == []
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="schema version 99.*newer"):
        with open_store(db, read_only=True):
            pass
    con = duckdb.connect(str(db))
    con.execute("UPDATE meta SET value = '0' WHERE key = 'schema_version'")
    con.close()
    with pytest.raises(StoreError, match="python -m analysis migrate"):
        with open_store(db, read_only=True):
            pass


def test_corrupt_and_foreign_files_get_clear_messages(tmp_path):
    bad = tmp_path / "bad.duckdb"
    bad.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a readable DuckDB database"):
        with open_store(bad):
            pass
    foreign = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(foreign))
    con.execute("CREATE TABLE t (x INTEGER)")
    con.close()
    with pytest.raises(StoreError, match="not made by the neuron viewer"):
        with open_store(foreign):
            pass
    with pytest.raises(StoreError, match="no database at"):
        with open_store(tmp_path / "missing.duckdb", read_only=True):
            pass


def test_read_only_location_is_refused():
    target = "/proc/neuron-viewer-test/x.duckdb"  # /proc refuses new folders, even for root
    with pytest.raises(StoreError, match="cannot (create folder|write)"):
        with open_store(target):
            pass


def test_reader_waits_for_a_writer_then_reads(tmp_path):
    db = tmp_path / "busy.duckdb"
    with open_store(db):
        pass
    holder = subprocess.Popen([sys.executable, "-c", (
        "import duckdb, sys, time; con = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(1.5); con.close()"),
        str(db)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(StoreError, match="in use by another process"):
        with open_store(db, read_only=True, wait_s=0.2):
            pass
    t0 = time.monotonic()
    with open_store(db, read_only=True, wait_s=10) as store:  # retries until the writer lets go
        assert store.runs.list() == []
    assert time.monotonic() - t0 > 0.3
    holder.wait(timeout=10)
