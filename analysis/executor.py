"""Where a job's compute runs: in this process (``local``) or as Ray tasks on a cluster (``ray``); under ``local``, a
job whose work is numpy loops on one core (topics) may run it in a worker process per core (``ProcessExecutor``).

A job splits its work into items (shards of corpus windows, chunks of units) and maps a *task* over them: a
picklable callable that gets what it needs once per process (``ModelHandle.get``: one model load per worker)
and returns plain results. The job, in the driver, writes every result, so a store has one writer whatever the
executor, and results come back in the items' order, so merges and writes are the same with either.

Ray is an optional extra (``pip install -r requirements-ray.txt``); nothing imports it unless ``ray`` is asked for.
A task that dies with its worker (killed, out of memory) is run again on another worker (``RETRIES``).
"""

from __future__ import annotations

import functools
import logging
import os
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from analysis.types import UserError

EXECUTORS = ("local", "ray")
RETRIES = 3
"""Times Ray runs a task again after its worker died."""


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str = "local"
    """local (this process) or ray."""
    address: str | None = None
    """Ray only: None starts a local cluster for the build; 'auto' joins the cluster started on this machine
    (``ray start --head``); HOST:PORT joins that one."""
    cpus: int | None = None
    """CPUs of a local Ray cluster (None: all of this machine's)."""

    def __post_init__(self):
        if self.kind not in EXECUTORS:
            raise UserError(f"--executor {self.kind!r}: use one of {', '.join(EXECUTORS)}")
        if self.kind == "local" and (self.address is not None or self.cpus is not None):
            raise UserError("--ray-address and --ray-cpus need --executor ray")


@dataclass
class ModelHandle:
    """A subject model by name, for tasks: the driver may hand over the model it has loaded (``loaded``, never
    pickled); a worker loads it once per process and checks it is the cached model's weights."""

    name: str
    model_id: str
    device: str = "cpu"
    dtype: str = "float32"
    loaded: object = field(default=None, compare=False, repr=False)

    def get(self):
        return self.loaded if self.loaded is not None else _load(self.name, self.model_id, self.device, self.dtype)

    def __getstate__(self):
        return {**vars(self), "loaded": None}


@functools.lru_cache(maxsize=2)
def _load(name: str, model_id: str, device: str, dtype: str):
    from analysis.models import load_subject

    return load_subject(name, model_id, device, dtype)


class LocalExecutor:
    """Every task in this process, one after another."""

    local = True
    workers = 1

    def map(self, task: Callable, items: Iterable) -> Iterator:
        for item in items:
            yield task(item)

    def close(self) -> None:
        pass


def _call(task, item):
    return task(item)


class ProcessExecutor:
    """Tasks in ``workers`` processes of this machine, for work one process cannot spread over the cores (numpy
    loops: topics; torch's matmuls already use every core, so harvest and graphs gain nothing). Each worker is
    spawned, gets the task once (``_install``) and loads what it needs once; torch runs ``cores // workers``
    threads in each. Results come back in the items' order, at most two items per worker in flight. A worker exits
    when the driver is gone (a build killed with SIGKILL leaves no worker behind).

    ``map(task, items, key)``: maps with the same ``key`` (not None) share their workers (started, with the task of
    the first, by the first of them) until ``close`` or a map with another key: a build's topics stage starts them
    once for every layer. Without a key, a map's workers end with it."""

    local = False

    def __init__(self, workers: int):
        self.workers = workers
        self._pool = None
        self._key = None

    def _start(self, task):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        threads = max(1, cores() // self.workers)
        return ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_install, initargs=(task, threads, os.getpid()))

    def map(self, task: Callable, items: Iterable, key=None) -> Iterator:
        if key is None or key != self._key:
            self.close()
        if self._pool is None:
            self._pool = self._start(task)
            self._key = key
        pool = self._pool
        pending: deque = deque()
        try:
            for item in items:
                pending.append(pool.submit(_run_installed, item))
                if len(pending) >= 2 * self.workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            if self._pool is pool:
                self._pool, self._key = None, None
            raise
        if key is None:
            self.close()

    def close(self) -> None:
        """End the workers (idempotent; a later map starts new ones)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool, self._key = None, None


_INSTALLED: list = []


def _install(task, threads: int, driver: int) -> None:
    import threading
    import time

    def watch() -> None:  # a driver killed outright (SIGKILL) leaves no one to stop us: go with it
        while os.getppid() == driver:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    import torch

    torch.set_num_threads(threads)
    _INSTALLED[:] = [task]


def _run_installed(item):
    return _INSTALLED[0](item)


def cores() -> int:
    """CPU cores this process may use."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class RayExecutor:
    """Tasks on a Ray cluster (one CPU each, or one GPU each with ``device`` cuda); at most two per worker slot in
    flight, so a job's inputs do not all sit in the object store at once."""

    local = False

    def __init__(self, config: ExecutorConfig, device: str = "cpu"):
        try:
            import ray
        except ImportError:
            raise UserError("--executor ray needs Ray: pip install -r requirements-ray.txt") from None
        self.ray = ray
        where = _check_address(config.address)
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                      ignore_reinit_error=True)
        try:
            if config.address is None:
                ray.init(num_cpus=config.cpus, **kwargs)
            else:
                kwargs.pop("include_dashboard")
                ray.init(address=config.address, **kwargs)
        except ConnectionError as exc:
            raise UserError(f"--ray-address {config.address}: no Ray cluster found ({exc}); start one with "
                            "`ray start --head`, or leave --ray-address out for a local cluster") from None
        resources = ray.cluster_resources()
        self.gpu = device.startswith("cuda")
        if self.gpu and resources.get("GPU", 0) < 1:
            self.close()
            raise UserError(f"--device {device}: the Ray cluster ({where}) has no GPU")
        self.workers = max(1, int(resources.get("GPU" if self.gpu else "CPU", 1)))
        self._remote = ray.remote(max_retries=RETRIES)(_call).options(
            num_cpus=1, num_gpus=1 if self.gpu else 0, name="analysis-task")

    def map(self, task: Callable, items: Iterable) -> Iterator:
        ref = self.ray.put(task)  # shipped once, however many items
        pending: deque = deque()
        for item in items:
            pending.append(self._remote.remote(ref, item))
            if len(pending) >= 2 * self.workers:
                yield self.ray.get(pending.popleft())
        while pending:
            yield self.ray.get(pending.popleft())

    def close(self) -> None:
        if self.ray.is_initialized():
            self.ray.shutdown()


def _check_address(address: str | None) -> str:
    """Fail fast on a HOST:PORT nobody listens on (Ray itself retries for minutes)."""
    if address is None:
        return "local"
    if address == "auto":
        return address
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            return address
    except (OSError, ValueError) as exc:
        raise UserError(f"--ray-address {address}: cannot reach a Ray cluster there ({exc}); check the address "
                        "(`ray status` on the head node prints it), or leave --ray-address out for a local "
                        "cluster") from None


def make_executor(config: ExecutorConfig, device: str = "cpu"):
    return LocalExecutor() if config.kind == "local" else RayExecutor(config, device)


LOCAL = LocalExecutor()
