"""Word-pool topics in worker processes: the rows equal one process's; the process executor's workers."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import REPO


def _worker_test_inputs(tmp_path) -> tuple[str, Path, Path]:
    """(a tiny model with word-like tokens, a corpus of 24 documents to harvest, a reference text for NPMI)."""
    import json

    from tests.helpers import TINY_TEXT, tiny_model_folder

    model = str(tiny_model_folder(tmp_path / "words", "llama", vocab_size=700))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"title": f"d{i}", "text": " ".join(TINY_TEXT[i % 4:] + TINY_TEXT[:i % 4])})
                            + "\n" for i in range(24)))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TINY_TEXT * 40))
    return model, docs, ref


def _topic_tables(db) -> list:
    """Every stored topic set (but its timings), topic and star, sorted."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(q).fetchall() for q in (
            "SELECT * EXCLUDE (seconds, created_at) FROM topic_sets ORDER BY ALL",
            "SELECT * FROM topics ORDER BY ALL", "SELECT * FROM topic_stars ORDER BY ALL")]
    finally:
        con.close()


def test_topics_in_worker_processes_equal_this_process(tmp_path, capsys, monkeypatch):
    """Two worker processes (spawned, one chunk of units per task) store exactly the rows one process stores."""
    from analysis.__main__ import main
    from analysis.executor import ProcessExecutor

    used = []
    plain_map = ProcessExecutor.map

    def spy(self, task, items, key=None):
        used.append(self.workers)
        yield from plain_map(self, task, items, key)

    monkeypatch.setattr(ProcessExecutor, "map", spy)
    model, docs, ref = _worker_test_inputs(tmp_path)
    tables = []
    for workers in (1, 2):
        db = tmp_path / f"w{workers}.duckdb"
        assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "1",
                     "--seq-len", "24", "--quiet"]) == 0
        assert main(["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-11", "--k", "3",
                     "--tau", "700", "--corpus", str(ref), "--min-count", "2", "--chunk", "4", "--workers",
                     str(workers), "--quiet"]) == 0
        tables.append(_topic_tables(db))
    assert used == [2]  # --workers 1 ran in this process
    assert len(tables[0][0]) == 12 * 2 * 5 and tables[0][1] and tables[0] == tables[1]
    capsys.readouterr()


def test_topics_of_two_layers_share_the_callers_worker_processes(tmp_path, monkeypatch):
    """A build's topics stage hands every layer the same worker processes: started once, same rows as one
    process computes layer by layer."""
    import analysis.executor as executor_module
    import analysis.jobs.topics as topics_job
    from analysis.__main__ import main
    from analysis.executor import ProcessExecutor
    from analysis.topics.types import NpmiConfig, TopicConfig

    starts = []
    plain_start = ProcessExecutor._start

    def spy(self, task):
        starts.append(task)
        return plain_start(self, task)

    monkeypatch.setattr(ProcessExecutor, "_start", spy)
    monkeypatch.setattr(topics_job, "PROCESS_MIN_UNITS", 1)
    monkeypatch.setattr(executor_module, "cores", lambda: 2)  # one worker per core, whatever this machine has
    model, docs, ref = _worker_test_inputs(tmp_path)
    tables = []
    for shared in (False, True):
        db = tmp_path / f"shared{shared}.duckdb"
        assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "0-1",
                     "--seq-len", "24", "--quiet"]) == 0
        processes = ProcessExecutor(2) if shared else None
        try:
            for layer in (0, 1):
                job = topics_job.TopicsJob(layer=layer, neurons="0-7", model=model, chunk=4,
                                           workers=0 if shared else 1, topic=TopicConfig(k=3, tau=700),
                                           npmi=NpmiConfig(corpora=(str(ref),), min_count=2))
                topics_job.topics(job, db, with_sets=False, processes=processes)
        finally:
            if processes is not None:
                processes.close()
        tables.append(_topic_tables(db))
    assert len(starts) == 1  # two layers, one start of the workers
    assert len(tables[0][0]) == 2 * 8 * 2 * 5 and tables[0][1] and tables[0] == tables[1]


def _worker_pid(_item) -> int:
    import os

    return os.getpid()


def test_process_executor_reuses_its_workers_for_one_key():
    from analysis.executor import ProcessExecutor

    ex = ProcessExecutor(2)
    try:
        first = set(ex.map(_worker_pid, range(6), key="a"))
        pool = set(ex._pool._processes)
        again = set(ex.map(_worker_pid, range(6), key="a"))
        assert first | again <= pool and ex._pool is not None
        other = set(ex.map(_worker_pid, range(6), key="b"))  # another task: new workers
        assert not other & pool
        list(ex.map(_worker_pid, range(2)))  # no key: workers of its own, ended with the map
        assert ex._pool is None
    finally:
        ex.close()


def test_process_executor_keeps_order_and_raises_a_task_error():
    import operator

    from analysis.executor import ProcessExecutor

    assert list(ProcessExecutor(2).map(operator.neg, range(7))) == [0, -1, -2, -3, -4, -5, -6]
    got = []
    with pytest.raises(ValueError):
        for x in ProcessExecutor(2).map(int, ["1", "2", "x", "4"]):
            got.append(x)
    assert got == [1, 2]


def test_process_executor_workers_go_with_a_killed_driver(tmp_path):
    """A driver killed outright (SIGKILL, as a killed build) takes its worker processes with it: none is left
    waiting for work that will never come."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = REPO
    script = tmp_path / "drive.py"
    script.write_text("import time\nfrom analysis.executor import ProcessExecutor\nif __name__ == '__main__':\n"
                      "    for _ in ProcessExecutor(2).map(time.sleep, [5] * 8):\n        pass\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def tree() -> tuple[int | None, list[int]]:  # (the python running the script, its spawned workers)
        rows = [line.split(None, 2) for line in subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True,
                                                               text=True).stdout.splitlines()]
        mine, changed = {proc.pid}, True  # sys.executable may be a launcher: walk every descendant
        while changed:
            more = {int(p) for p, pp, *_ in rows if int(pp) in mine} - mine
            mine |= more
            changed = bool(more)
        args = {int(p): (a[0] if a else "") for p, _pp, *a in rows if int(p) in mine}
        driver = next((p for p, a in args.items() if "drive.py" in a), None)
        return driver, [p for p, a in args.items() if "spawn_main" in a]

    driver, workers = None, []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        driver, workers = tree()
        time.sleep(0.2)
    assert driver and len(workers) == 2 and all(alive(w) for w in workers)
    time.sleep(3)  # the workers are in their tasks now
    os.kill(driver, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), [w for w in workers if alive(w)]
