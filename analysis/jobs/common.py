"""What the jobs share: unit and layer specs, the cached model, unit records and the subject model, fan-out."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator

from analysis.types import MLP, ModelInfo, UnitId, UnitRecord, UserError


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', '5', '0,5,10' or '0-3,7' -> sorted layer list, checked against the model."""
    return _parse_spec(spec, n_layers, "--layers", "use 'all', a list like 0,5,10 or a range like 0-3",
                       f"the model has layers 0..{n_layers - 1}", allow_all=True)


def parse_units(spec: str, n: int, what: str = "neurons", allow_all: bool = False) -> list[int]:
    """'0-99', '3,5,8', '7' (or 'all' where allowed) -> sorted unit indices in 0..n-1."""
    return _parse_spec(spec, n, "--neurons", "use a list like 3,5,8 or a range like 0-99",
                       f"{what} go from 0 to {n - 1}", allow_all)


def _parse_spec(spec: str, n: int, flag: str, usage: str, bounds: str, allow_all: bool) -> list[int]:
    if allow_all and spec.strip().lower() == "all":
        return list(range(n))
    out: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                out.update(range(int(a), int(b) + 1))
            elif part:
                out.add(int(part))
    except ValueError:
        raise UserError(f"{flag} {spec!r}: {usage}") from None
    if not out or any(not 0 <= i < n for i in out):
        raise UserError(f"{flag} {spec!r}: {bounds}")
    return sorted(out)


def fmt_layers(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def cached_model(store, model: str) -> ModelInfo:
    """The cached model of that name or id, or a UserError naming the models the database holds."""
    info = store.catalog.model(model)
    if info is None:
        known = ", ".join(sorted({m.name for m in store.catalog.models()})) or "none yet"
        raise UserError(f"model {model!r} is not in {store.path} (cached models: {known})")
    return info


def check_layer(info: ModelInfo, layer: int) -> None:
    if not 0 <= layer < info.n_layers:
        raise UserError(f"layer {layer} does not exist: {info.name} has layers 0..{info.n_layers - 1}")


def n_units(store, info: ModelInfo, source: str, layer: int) -> int:
    """How many units ``source`` has at ``layer``: d_mlp neurons, or a dictionary's width (UserError if the cache
    knows no such dictionary at that layer)."""
    check_layer(info, layer)
    if source == MLP:
        return info.d_mlp
    d = store.catalog.dictionary(source)
    if d is None or d.model_id != info.model_id:
        known = ", ".join(x.source for x in store.catalog.dictionaries(info.model_id)) or "none"
        raise UserError(f"source {source!r} is not a dictionary of {info.name} in {store.path} (known: {known})")
    if d.layer != layer:
        raise UserError(f"{source} reads layer {d.layer}, not layer {layer}")
    return d.d_sae


def load_dictionary_of(store, source: str):
    """The dictionary (analysis.sae.SAE) behind a source, or None for the MLP neurons."""
    if source == MLP:
        return None
    from analysis.sae import load_dictionary

    d = store.catalog.dictionary(source)
    if d is None:
        raise UserError(f"source {source!r} is not a dictionary in {store.path}")
    return load_dictionary(d)


def _run_of(store, model: str, unit: UnitId, run_id: str | None = None):
    """The run that holds a unit, or a UserError saying what is missing and how to get it."""
    info = cached_model(store, model)
    n = n_units(store, info, unit.source, unit.layer)
    if not 0 <= unit.index < n:
        what = "neuron" if unit.source == MLP else "feature"
        raise UserError(f"{what} {unit.index} does not exist: {unit.source} has {what}s 0..{n - 1} at layer "
                        f"{unit.layer}")
    run = store.runs.get(run_id) if run_id else store.runs.find(model, unit.layer, source=unit.source)
    if run is None:
        how = f"--layers {unit.layer}" if unit.source == MLP else "--sae <its folder>"
        raise UserError(f"layer {unit.layer} of {model} ({unit.source}) has not been harvested into {store.path}; "
                        f"run: python -m analysis harvest --model {model} {how} --db {store.path}")
    return run


def unit_record(store, model: str, unit: UnitId, run_id: str | None = None) -> UnitRecord:
    """The record of a harvested unit, or a UserError saying what is missing and how to get it."""
    return _unit_records(store, model, unit.layer, [unit.index], unit.source, run_id)[unit.index]


def _unit_records(store, model: str, layer: int, indices: list[int], source: str = MLP,
                  run_id: str | None = None) -> dict[int, UnitRecord]:
    if not indices:
        return {}
    for i in (min(indices), max(indices)):  # both ends checked: every index lies between
        run = _run_of(store, model, UnitId(source, layer, i), run_id)
    recs = {}
    for start in range(0, len(indices), READ_CHUNK):
        recs.update(store.records.unit_records(run, source, layer, indices[start : start + READ_CHUNK]))
    missing = [i for i in indices if i not in recs]
    if missing:
        raise UserError(f"{UnitId(source, layer, missing[0])} is not in run {run.run_id} of {store.path}")
    return recs


READ_CHUNK = 64
"""Units whose records are read in one query."""


def unit_records(db: Path, model: str, layer: int, indices: list[int], source: str = MLP) -> dict[int, UnitRecord]:
    """index -> record of units of one layer, read in one short read-only visit (a few queries per chunk of
    units)."""
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        return _unit_records(store, model, layer, sorted(set(indices)), source)


def load_cached_subject(info: ModelInfo, device: str, dtype: str = "float32"):
    """The subject model a cache was harvested from, refusing other weights under the same name."""
    return load_subject(info.name, info.model_id, device, dtype)


def load_subject(name: str, model_id: str, device: str, dtype: str = "float32"):
    """Load model ``name``; a UserError when it no longer has the weights ``model_id`` names."""
    import torch

    from analysis.models import load_model

    subject = load_model(name, device=device, dtype=getattr(torch, dtype))
    if subject.info.model_id != model_id:
        raise UserError(f"{name} now loads weights {subject.info.model_id}, but the cache was harvested from "
                        f"{model_id}: harvest again, or restore those weights")
    return subject


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

