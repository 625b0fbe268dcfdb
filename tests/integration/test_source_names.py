"""Naming a dictionary by its folder, its bare name or ``sae:<name>`` wherever a full source id is taken: the CLI's
``--source`` and the viewer's ``?source=`` (docs/cli.md)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest

from analysis.__main__ import main
from analysis.types import MLP, UserError
from tests.helpers import open_page

OTHER = "sae:tiny-sae@deadbeef"
"""A second dictionary of the same name (one folder trained twice)."""


def _store(db, read_only=True):
    from cache.store import open_store

    return open_store(db, read_only=read_only)


def _full_id(db) -> str:
    with _store(db) as s:
        (d,) = s.catalog.dictionaries()
    return d.source


def _export(db, model, source: str, capsys) -> tuple[int, str, str]:
    rc = main(["export", "--db", str(db), "--model", model, "--source", source, "--layer", "1", "--neuron", "3",
               "--compact"])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture
def twice(sae_db, tmp_path):
    """A copy of sae_db whose catalog holds a second dictionary named like the first: (db, model, ids)."""
    db0, model, _folder = sae_db
    db = tmp_path / "twice.duckdb"
    shutil.copy(db0, db)
    with _store(db, read_only=False) as s:
        (d,) = s.catalog.dictionaries()
        s.catalog.put_dictionary(replace(d, source=OTHER))
    return db, model, (d.source, OTHER)


def test_export_takes_the_bare_name_folder_and_short_id(sae_db, capsys, monkeypatch):
    db, model, folder = sae_db
    full = _full_id(db)
    rc, expect, _ = _export(db, model, full, capsys)
    assert rc == 0 and json.loads(expect)
    monkeypatch.chdir(folder.parent.parent)  # a relative folder, with and without its trailing slash
    relative = f"{folder.parent.name}/{folder.name}"
    for name in ("tiny-sae", "sae:tiny-sae", str(folder), str(folder) + "/", relative, relative + "/", f"./{relative}"):
        rc, out, err = _export(db, model, name, capsys)
        assert (rc, out) == (0, expect), (name, err)


def test_list_stores_the_full_id(sae_db, tmp_path, capsys):
    db0, model, _folder = sae_db
    db = tmp_path / "lists.duckdb"
    shutil.copy(db0, db)
    full = _full_id(db)
    assert main(["list", "add", "picked", "--db", str(db), "--model", model, "--source", "tiny-sae", "--layer", "1",
                 "--neuron", "3"]) == 0
    assert main(["list", "add", "picked", "--db", str(db), "--model", model, "--layer", "1", "--neuron", "3"]) == 0
    with _store(db) as s:
        assert sorted(i.unit.source for i in s.lists.get("picked").items) == sorted([full, MLP])
    assert full in capsys.readouterr().out


def test_ambiguous_name_lists_the_candidates(twice, capsys):
    db, model, ids = twice
    for name in ("tiny-sae", "sae:tiny-sae"):
        rc, out, err = _export(db, model, name, capsys)
        assert rc == 2 and not out
        assert "names 2 dictionaries" in err and all(i in err for i in ids) and "layer 1 resid_post" in err, err
    rc, _out, err = _export(db, model, ids[0], capsys)  # the full id still picks one
    assert rc == 0, err


def test_ambiguous_folder_lists_the_candidates(twice, capsys):
    db, model, ids = twice
    with _store(db) as s:
        folder = s.catalog.dictionary(ids[0]).path
    rc, _out, err = _export(db, model, folder, capsys)
    assert rc == 2 and all(i in err for i in ids) and folder in err, err


def test_unknown_name_lists_the_known_ids(sae_db, capsys):
    db, model, _folder = sae_db
    rc, out, err = _export(db, model, "no-such-sae", capsys)
    assert rc == 2 and not out
    assert "'no-such-sae' is not a dictionary" in err and f"known: {_full_id(db)}" in err, err
    assert main(["score", "--db", str(db), "--model", model, "--source", "nope", "--layer", "1", "--neuron", "3",
                 "--quiet"]) == 2
    assert "known: " in capsys.readouterr().err


def test_resolver_keeps_mlp_and_full_ids(sae_db):
    from analysis.jobs.reads import match_source, resolve_unit_source

    db, model, folder = sae_db
    full = _full_id(db)
    with _store(db) as s:
        assert resolve_unit_source(s, model, MLP) == MLP
        assert resolve_unit_source(s, model, full) == full
        assert resolve_unit_source(s, None, "tiny-sae") == full
        assert resolve_unit_source(s, model, str(folder)) == full
        assert resolve_unit_source(s, "no-such-model", "tiny-sae") == "tiny-sae"  # the job then names the model
        with pytest.raises(UserError, match="known: none"):
            match_source([], "tiny-sae")


def test_viewer_url_takes_the_bare_name(sae_db, monkeypatch):
    db, model, _folder = sae_db
    full = _full_id(db)
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=5, source="tiny-sae")
    assert not at.exception and not at.error and not at.warning
    assert at.title[0].value.endswith("L1 · F5 (tiny-sae)")
    assert at.query_params["source"] == full  # the URL is rewritten to the full id
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=5, source="no-such-sae")
    assert not at.exception and "'no-such-sae' is not a dictionary" in at.error[0].value


def test_viewer_url_with_an_ambiguous_name_says_so(twice):
    from viewer.components.picker import url_source

    db, model, ids = twice
    with _store(db) as s:
        info = s.catalog.model(model)
        dictionaries = {d.source: d for d in s.catalog.dictionaries()}
    have = [MLP, ids[0]]
    assert url_source("tiny-sae", info, [MLP, ids[0]], {ids[0]: dictionaries[ids[0]]}) == (ids[0], None)
    source, why = url_source("tiny-sae", info, have, dictionaries)
    assert source == "tiny-sae" and "names 2 dictionaries" in why and all(i in why for i in ids)
    assert url_source(ids[1], info, have, dictionaries) == (ids[1], None)  # known, not harvested: the picker says so
