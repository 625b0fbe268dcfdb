"""The jobs' reads from the store: the cached model, a source's size and dictionary, the full id a dictionary's
name or folder stands for, unit records (short read-only visits)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from analysis.types import MLP, DictionaryInfo, ModelInfo, UnitId, UnitRecord, UserError


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
        raise _unknown(source, store.catalog.dictionaries(info.model_id), f" of {info.name} in {store.path}")
    if d.layer != layer:
        raise UserError(f"{source} reads layer {d.layer}, not layer {layer}")
    return d.d_sae


def resolve_unit_source(store, model: str | None, text: str) -> str:
    """The full unit source id that ``text`` names among the dictionaries of ``model`` (a name or id; None: of
    every model): see ``match_source``. A model the cache does not hold leaves ``text`` as it is (the job then
    says the model is missing)."""
    if text == MLP:
        return MLP
    info = store.catalog.model(model) if model is not None else None
    if model is not None and info is None:
        return text
    where = f" of {info.name} in {store.path}" if info else f" in {store.path}"
    return match_source(store.catalog.dictionaries(info.model_id if info else None), text, where)


def match_source(dictionaries: Iterable[DictionaryInfo], text: str, where: str = "") -> str:
    """The full id (``sae:<name>@<digest prefix>``) of the one dictionary ``text`` names: its id, its folder
    (relative or absolute, trailing slash or not), its bare name or ``sae:<name>``; ``mlp`` stays ``mlp``.

    UserError when none matches (listing the known ids) or several do (listing each with its layer, site and
    folder: e.g. one folder trained twice); ``where`` (" of <model> in <db>") goes into those messages."""
    if text == MLP:
        return MLP
    ds = list(dictionaries)
    for test in (_is_id, _is_folder, _is_name):
        found = [d for d in ds if test(d, text)]
        if len(found) == 1:
            return found[0].source
        if found:
            listed = "; ".join(f"{d.source} (layer {d.layer} {d.site}, {d.path or d.kind})" for d in found)
            raise UserError(f"{text!r} names {len(found)} dictionaries{where}: {listed}; give one of these ids")
    raise _unknown(text, ds, where)


def _is_id(d: DictionaryInfo, text: str) -> bool:
    return d.source == text


def _is_folder(d: DictionaryInfo, text: str) -> bool:
    return bool(d.path) and Path(d.path).resolve() == Path(text).expanduser().resolve()


def _is_name(d: DictionaryInfo, text: str) -> bool:
    return text in (d.name, d.source.rsplit("@", 1)[0])


def _unknown(text: str, dictionaries: Iterable[DictionaryInfo], where: str) -> UserError:
    known = ", ".join(d.source for d in dictionaries) or "none"
    return UserError(f"source {text!r} is not a dictionary{where} (known: {known})")


def load_dictionary_of(store, source: str):
    """The dictionary (analysis.sae.model.SAE) behind a source, or None for the MLP neurons."""
    if source == MLP:
        return None
    from analysis.sae.load import load_dictionary

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
