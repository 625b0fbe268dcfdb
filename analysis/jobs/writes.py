"""Results written in batches: a few read-write visits to the store, however many units a job covers."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable


WRITE_CHUNK = 256
WRITE_SECONDS = 5.0


@contextmanager
def batched_writes(db: Path, put: Callable, every: int = WRITE_CHUNK, seconds: float = WRITE_SECONDS):
    """``add(item)`` queues an item; ``put(store, items)`` writes the queue in one read-write visit every ``every``
    items or ``seconds`` (and when the block ends, also on Ctrl-C), so a job over thousands of units opens the store
    tens of times, not thousands, and can write each batch in one statement. A killed process loses at most the
    queue, which a resumed job redoes."""
    from cache.store import open_store

    pending: list = []
    last = [time.monotonic()]

    def flush() -> None:
        if pending:
            with open_store(db) as store:
                put(store, list(pending))
            pending.clear()
        last[0] = time.monotonic()

    def add(item) -> None:
        pending.append(item)
        if len(pending) >= every or time.monotonic() - last[0] >= seconds:
            flush()

    try:
        yield add
    finally:
        flush()
