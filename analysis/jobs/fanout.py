"""Work items run on a few threads (API calls), their results handed back to the caller's thread."""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from analysis.types import UserError


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
