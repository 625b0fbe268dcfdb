"""Work items run on a few threads (API calls), their results handed back to the caller's thread."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from analysis.types import UserError


@dataclass
class Tally:
    """What ``settled`` set aside: failed items (key -> why), and why the run stopped early with how many left."""

    failed: dict = field(default_factory=dict)
    stopped: str | None = None
    left: int = 0


def settled(outcomes: Iterable, tally: Tally, bar, progress, key: Callable = lambda item: item,
            what: str = "unit") -> Iterator[tuple[object, object]]:
    """The (item, result) of each success of ``outcomes`` ((item, result, error) triples), a bar step per
    outcome; a budget stop or a failure (noted by ``what`` and ``key(item)``) is counted in ``tally`` instead."""
    from analysis.api import BudgetReached

    for item, result, err in outcomes:
        bar.update(1)
        if isinstance(err, BudgetReached):
            tally.stopped, tally.left = str(err), tally.left + 1
        elif err is not None:
            tally.failed[key(item)] = str(err)
            progress.note(f"{what} {key(item)}: {err}")
        else:
            yield item, result


def fan_out(fn: Callable, items: Iterable, workers: int) -> Iterator[tuple[object, object, UserError | None]]:
    """Yield (item, result, UserError or None) as each finishes; at most ``workers`` run at once (API calls).
    The caller's thread does all writing."""
    items = list(items)
    if workers <= 1:
        for item in items:
            try:
                yield item, fn(item), None
            except UserError as exc:
                yield item, None, exc
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            exc = fut.exception()
            if exc is not None and not isinstance(exc, UserError):
                raise exc
            yield futures[fut], (None if exc else fut.result()), exc
