"""The Ray executor: the same jobs as Ray tasks on a 2-CPU local cluster give the same tables as this process,
a worker killed mid-task is retried, and bad cluster settings say so (exit 2)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tests.helpers import REPO, TINY_TEXT, build_contents


def _ray_tasks() -> list[int]:
    """PIDs of Ray workers running one of our tasks now (Ray titles a busy worker with its task's name)."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    return [int(line.split(None, 1)[0]) for line in out.splitlines() if "ray::analysis-task" in line]


def _everything(db) -> dict:
    """build_contents, and the records' activations and the effects (without timings)."""
    from cache.store import open_store

    out = build_contents(db)
    with open_store(db, read_only=True) as s:
        for name, q in {"acts": "SELECT * EXCLUDE (run_id) FROM records ORDER BY ALL",
                        "moments": "SELECT * EXCLUDE (run_id) FROM unit_stats ORDER BY ALL",
                        "token_means": "SELECT * EXCLUDE (run_id) FROM token_means ORDER BY ALL",
                        "effects": "SELECT * EXCLUDE (run_id, seconds, created_at) FROM unit_effects ORDER BY ALL"}.items():
            out[name] = s.con.execute(q).fetchall()
    return out


def test_a_ray_build_with_a_worker_killed_equals_a_local_build(tiny_folders, viewer_db, tmp_path):
    """harvest, baselines, graphs and effects as Ray tasks (2 CPUs); one worker is SIGKILLed while it runs a task:
    Ray runs the task again and every table equals the local build's."""
    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["neox"])

    def args(db, *more):
        return [sys.executable, "-m", "analysis", "build", "--db", str(db), "--model", model, "--corpus", str(corpus),
                "--layers", "all", "--lenses", "harvest,baselines,n2g,effects", "--quiet", *more]

    local = tmp_path / "local.duckdb"  # one torch thread, as each Ray task has: float sums then add up alike
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}
    assert subprocess.run(args(local), cwd=REPO, capture_output=True, env=one_thread).returncode == 0
    on_ray = tmp_path / "ray.duckdb"
    proc = subprocess.Popen(args(on_ray, "--executor", "ray", "--ray-cpus", "2"), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    killed = []
    deadline = time.monotonic() + 240
    while proc.poll() is None and not killed and time.monotonic() < deadline:
        busy = _ray_tasks()
        if busy:
            os.kill(busy[0], signal.SIGKILL)
            killed.append(busy[0])
        time.sleep(0.02)
    err = proc.communicate(timeout=300)[1]
    assert killed, "no Ray task was seen running: nothing was killed"
    assert proc.returncode == 0, err[-2000:]
    a, b = _everything(local), _everything(on_ray)
    assert all(a[k] for k in a) and a.keys() == b.keys()
    for k in a:
        assert a[k] and a[k] == b[k], k


def test_harvest_passes_and_topics_on_ray_equal_this_process(tiny_folders, viewer_db, tmp_path, capsys):
    """A harvest split into passes (one per worker, each a Ray task with its share of the memory budget; the driver
    writes them layer by layer) and the topics of every mode on a 2-CPU cluster store exactly what the same jobs
    store in this process (one pass)."""
    from analysis.config import HarvestConfig
    from analysis.executor import ExecutorConfig, RayExecutor
    from analysis.jobs.harvest import HarvestJob, harvest
    from analysis.jobs.topics import TopicsJob, topics
    from analysis.topics.types import NpmiConfig, TopicConfig
    from cache.store import open_store

    corpus = viewer_db[0].parent / "docs.jsonl"
    model = str(tiny_folders["llama"])
    job = HarvestJob(model=model, corpus=str(corpus), layers="0,1", config=HarvestConfig(seq_len=16))
    reference = tmp_path / "reference.txt"  # NPMI from other text than the harvest's
    rng = random.Random(7)
    reference.write_text("\n\n".join(" ".join(rng.choice(TINY_TEXT) for _ in range(6)) for _ in range(400)))
    tj = TopicsJob(layer=1, model=model, npmi=NpmiConfig(corpora=(str(reference),), min_count=1),
                   topic=TopicConfig(k=2, tau=300))  # the tiny vocabulary's pools are a few words
    ray = RayExecutor(ExecutorConfig("ray", cpus=2))
    try:
        assert ray.workers == 2
        for db, executor in ((tmp_path / "local.duckdb", None), (tmp_path / "ray.duckdb", ray)):
            s = harvest(job, db, executor=executor)
            assert s.status == "done"
            t = topics(tj, db, executor=executor)
            assert t.computed > 0
    finally:
        ray.close()
    err = capsys.readouterr().err
    assert "in 2 passes" in err and "2 workers: each pass in 1/2 of the budget" in err, err
    a, b = _everything(tmp_path / "local.duckdb"), _everything(tmp_path / "ray.duckdb")
    queries = {"topic_sets": "SELECT * EXCLUDE (seconds, created_at) FROM topic_sets ORDER BY ALL",
               "topics": "SELECT * FROM topics ORDER BY ALL", "stars": "SELECT * FROM topic_stars ORDER BY ALL"}
    for db, out in ((tmp_path / "local.duckdb", a), (tmp_path / "ray.duckdb", b)):
        with open_store(db, read_only=True) as s:
            out.update({k: s.con.execute(q).fetchall() for k, q in queries.items()})
    for k in ("runs", "stats", "samples", "acts", "moments", "token_means", "topic_sets", "topics", "stars"):
        assert a[k] and a[k] == b[k], k


def test_bad_cluster_settings_exit_2(tiny_folders, viewer_db, tmp_path, capsys):
    from analysis.__main__ import main

    base = ["build", "--db", str(tmp_path / "x.duckdb"), "--model", str(tiny_folders["neox"]), "--corpus",
            str(viewer_db[0].parent / "docs.jsonl"), "--lenses", "harvest", "--quiet"]
    t0 = time.monotonic()
    assert main([*base, "--executor", "ray", "--ray-address", "127.0.0.1:1"]) == 2
    assert "cannot reach a Ray cluster there" in capsys.readouterr().err and time.monotonic() - t0 < 60
    assert main([*base, "--ray-address", "127.0.0.1:6379"]) == 2
    assert "need --executor ray" in capsys.readouterr().err
    import torch

    if not torch.cuda.is_available():
        assert main([*base, "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_a_ray_error_in_a_task_is_the_users_message(viewer_db):
    """A UserError raised inside a task reaches the driver as that UserError (not a Ray traceback)."""
    from analysis.executor import ExecutorConfig, ModelHandle, RayExecutor
    from analysis.jobs.n2g import GraphTask
    from analysis.n2g.config import N2GConfig
    from analysis.types import UserError

    ray = RayExecutor(ExecutorConfig("ray", cpus=1))
    try:
        with pytest.raises(UserError, match="now loads weights"):
            list(ray.map(GraphTask(ModelHandle(viewer_db[1], "not-these-weights"), 0, None, N2GConfig(), {}), [[]]))
    finally:
        ray.close()

