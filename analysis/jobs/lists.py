"""Job: keep named lists of units (with a note per unit), the one way the CLI and the viewer change them."""

from __future__ import annotations

from pathlib import Path

from analysis.types import UnitId, UserError


def add_to_list(db: Path, name: str, model: str, unit: UnitId, note: str = "") -> None:
    """Put a unit of a cached model on list ``name`` (created if new; a unit already on it gets the new note)."""
    from analysis.jobs.reads import cached_model, n_units
    from cache.store import open_store

    with open_store(db) as store:
        info = cached_model(store, model)
        n = n_units(store, info, unit.source, unit.layer)
        if not 0 <= unit.index < n:
            raise UserError(f"unit {unit.index} does not exist: layer {unit.layer} has {n} (0 .. {n - 1})")
        store.lists.add(name, info.model_id, unit, note)


def remove_from_list(db: Path, name: str, model_id: str, unit: UnitId) -> None:
    from cache.store import open_store

    with open_store(db) as store:
        store.lists.remove(name, model_id, unit)


def save_list(db: Path, name: str, description: str = "") -> None:
    from cache.store import open_store

    with open_store(db) as store:
        store.lists.save(name, description)


def delete_list(db: Path, name: str) -> None:
    from cache.store import open_store

    with open_store(db) as store:
        if store.lists.get(name) is None:
            raise UserError(f"no list named {name!r}")
        store.lists.delete(name)
