"""The DuckDB store: migrations, refusal of bad files, single-writer behaviour."""

from __future__ import annotations

import subprocess
import sys
import time

import duckdb
import numpy as np
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


def test_shared_readers_let_a_writer_in_and_then_see_its_writes(tmp_path):
    """The viewer's shared read-only connection: threads read through it at once; a writer in another process
    announces itself, gets the file within a moment although readers keep coming, and the next read sees what
    it wrote (a read-only connection never sees another process's writes: it is reopened)."""
    import threading

    from analysis.types import MLP, UnitId
    from cache.db import intent_path

    db = tmp_path / "shared.duckdb"
    with open_store(db) as s:
        s.lists.save("before")
    stop, seen, errors = threading.Event(), set(), []

    def reader():
        while not stop.is_set():
            try:
                with open_store(db, read_only=True, shared=True, wait_s=20) as s:
                    seen.update(s.lists.names())
                    time.sleep(0.02)
            except Exception as exc:  # pragma: no cover - the assertion below reports it
                errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    writer = subprocess.run([sys.executable, "-c", (
        "import sys; from cache.store import open_store\n"
        "with open_store(sys.argv[1], wait_s=10) as s: s.lists.save('written')"), str(db)],
        capture_output=True, text=True, timeout=60)
    waited = time.monotonic() - t0
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert writer.returncode == 0, writer.stderr
    assert waited < 8 and not errors, (waited, errors)
    assert {"before", "written"} <= seen and not intent_path(db).exists()
    # a writer in this process (the viewer's "compute now" jobs) also gets the file from the shared readers
    with open_store(db, read_only=True, shared=True) as s:
        assert "written" in s.lists.names()
    with open_store(db) as s:
        s.lists.add("in-process", "m", UnitId(MLP, 0, 1))
    with open_store(db, read_only=True, shared=True) as s:
        assert "in-process" in s.lists.names()
    # a writer that died leaves its announcement behind: readers do not wait for it
    intent_path(db).write_text("999999999")
    with open_store(db, read_only=True, shared=True, wait_s=0.5) as s:
        assert s.lists.names()


def test_bulk_record_reads_equal_one_unit_reads(viewer_db, sae_db):
    """unit_records reads a chunk of units in a few queries: each record equals its own one-unit read (which the
    harvest tests check against plain forward passes), for neurons and for a dictionary's features."""
    from analysis.jobs.reads import unit_records
    from analysis.types import MLP, UnitId, UserError
    from cache.store import open_store

    with open_store(sae_db[0], read_only=True) as s:
        feature_source = s.catalog.dictionaries(s.catalog.model(sae_db[1]).model_id)[0].source
    for db, model, source, layer in [(*viewer_db, MLP, 1), (sae_db[0], sae_db[1], feature_source, 1)]:
        with open_store(db, read_only=True) as s:
            run = s.runs.find(model, layer, source=source)
            bulk = s.records.unit_records(run, source, layer, [7, 0, 3, 7, 30])
            assert sorted(bulk) == [0, 3, 7, 30]
            for i, rec in bulk.items():
                one = s.records.unit_record(run, UnitId(source, layer, i))
                assert rec == one and rec.unit == UnitId(source, layer, i)
                assert rec.most_positive_activation_records and len(rec.top_tokens) <= 20
        chunked = unit_records(db, model, layer, list(range(0, 128 if source == MLP else 40)), source)
        assert chunked[30] == bulk[30]
    db, model = viewer_db
    with pytest.raises(UserError, match="neuron 100000 does not exist"):
        unit_records(db, model, 1, [0, 100000])


def test_stored_records_equal_plain_forward_passes(viewer_db):
    """What a harvest writes, read back: every record of every neuron of a layer (top, random and quantile samples,
    windows cut short at a document's end among them) holds its window's own activations from a plain forward pass
    of that window alone, one value per token; top records by max activation, highest first; each sample kind as
    many records as the run's settings ask for."""
    import torch

    from analysis.activations import mlp_activations
    from analysis.models import load_model
    from analysis.types import MLP

    db, model = viewer_db
    subject = load_model(model)
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        recs = s.records.unit_records(run, MLP, 1, list(range(subject.info.d_mlp)))
    assert sorted(recs) == list(range(subject.info.d_mlp))
    acts, lengths = {}, set()
    for rec in recs.values():
        maxima = [max(r.activations) for r in rec.most_positive_activation_records]
        assert len(maxima) == run.params["top_k"] and maxima == sorted(maxima, reverse=True)
        assert len(rec.random_sample) == run.params["random_k"]
        assert [len(b) for b in rec.random_sample_by_quantile] == [run.params["per_bin"]] * run.params["quantile_bins"]
        for r in (rec.most_positive_activation_records + rec.random_sample
                  + [r for b in rec.random_sample_by_quantile for r in b]):
            if r.window_id not in acts:
                ids = torch.tensor([list(subject.bos_prefix) + list(r.token_ids)])
                acts[r.window_id] = mlp_activations(subject, ids, None, [1])[1][0, len(subject.bos_prefix):].numpy()
            lengths.add(len(r.token_ids))
            assert len(r.activations) == len(r.tokens) == len(r.token_ids)
            np.testing.assert_allclose(r.activations, acts[r.window_id][:, rec.unit.index], rtol=2e-3, atol=2e-3)
    assert len(lengths) > 1  # short windows were among them


def test_explanations_and_baselines_written_in_bulk(tmp_path):
    """put_many / put_baselines: one statement for many, the same rows as one put after another (a repeated
    explanation once; a baseline of the same unit, predictor and set replaced, the last one winning)."""
    from analysis.evaluate import ScoredSimulation
    from analysis.types import MLP, Explanation, UnitId

    def sim(score: float, window_ids: list[int]) -> ScoredSimulation:
        return ScoredSimulation("", "token-lookup", {"k": 1}, "top-and-random", window_ids, [], [],
                                [[0.5, 10.0]], score, score / 2, None, 3.5)

    a, b = UnitId(MLP, 2, 7), UnitId(MLP, 2, 8)
    with open_store(tmp_path / "x.duckdb") as store:
        ex = store.explanations
        ids = ex.put_many([("run", a, Explanation("commas", "human")), ("run", b, Explanation("dates", "human")),
                           ("run", a, Explanation("commas", "human"))])
        assert ids[0] == ids[2] != ids[1] and ex.put("run", a, Explanation("commas", "human")) == ids[0]
        assert [e.text for e in ex.of_unit("run", a)] == ["commas"] and ex.units_explained_by("run", MLP, 2,
                                                                                               "human") == {7, 8}
        ex.put_baselines([("run", a, sim(0.1, [1])), ("run", b, sim(0.2, [2])), ("run", a, sim(0.3, [3, 4]))])
        ex.put_baseline("run", b, sim(0.4, [5]))
        got = {x.unit: x for x in ex.baselines("run")}
        assert set(got) == {a, b} and len(ex.baselines("run")) == 2
        assert (got[a].score, got[a].window_ids, got[a].rsquared) == (0.3, [3, 4], 0.15)
        assert (got[b].score, got[b].window_ids, got[b].predicted, got[b].max_activation) == (0.4, [5], [[0.5, 10.0]],
                                                                                               3.5)
        assert got[a].params == {"k": 1} and got[a].error is None
        assert ex.units_with_baseline("run", MLP, 2, "token-lookup", "top-and-random") == {7, 8}
        assert ex.units_with_baseline("run", MLP, 2, "token-lookup", "random-only") == set()


def test_units_for_a_token_rank_by_mean_and_by_z_from_the_units_statistics(viewer_db):
    """A token's units by mean and by z = (mean on the token - unit mean) / unit std (stored with the token's row
    at the write), z against each unit's own stored statistics."""
    from analysis.types import MLP, UnitId

    db, model = viewer_db
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 0)
        token = s.con.execute("SELECT token_id FROM token_means WHERE run_id = ? GROUP BY token_id "
                              "ORDER BY count(*) DESC LIMIT 1", [run.run_id]).fetchone()[0]
        by_mean = s.records.units_for_token(run.run_id, token, limit=10)
        by_z = s.records.units_for_token(run.run_id, token, limit=10, rank="z")
        stats = {h.unit: s.records.unit_stats(run.run_id, h.unit) for h in by_mean + by_z}
    assert len(by_z) == 10 and [h.mean for h in by_mean] == sorted((h.mean for h in by_mean), reverse=True)
    for h in by_mean + by_z:
        st = stats[h.unit]
        assert h.z == pytest.approx((h.mean - st.mean) / st.std, rel=1e-6) if st.std > 0 else h.z is None
    zs = [h.z for h in by_z]
    assert zs == sorted(zs, reverse=True) and all(isinstance(h.unit, UnitId) and h.unit.source == MLP for h in by_z)
