"""Lists of units: kept in the store, opened as a page from a URL, changed from the unit page and the CLI."""

from __future__ import annotations

import shutil

import pytest

from analysis.__main__ import main
from analysis.types import MLP, UnitId
from viewer.site import main as site_main


@pytest.fixture()
def db(viewer_db, tmp_path):
    src, model = viewer_db
    copy = tmp_path / "lists.duckdb"
    shutil.copy(src, copy)
    return copy, model


def test_cli_keeps_lists_with_notes(db, capsys):
    from cache.store import open_store

    path, model = db
    base = ["--db", str(path), "--model", model, "--layer", "1"]
    assert main(["list", "add", "picks", *base, "--neuron", "4", "--note", "first"]) == 0
    assert main(["list", "add", "picks", *base, "--neuron", "2"]) == 0
    assert main(["list", "add", "picks", *base, "--neuron", "4", "--note", "changed"]) == 0  # once, new note
    assert main(["list", "add", "picks", *base, "--neuron", "99999"]) == 2
    assert "does not exist" in capsys.readouterr().err
    with open_store(path, read_only=True) as s:
        lst = s.lists.get("picks")
        assert [(i.unit, i.note) for i in lst.items] == [(UnitId(MLP, 1, 4), "changed"), (UnitId(MLP, 1, 2), "")]
        assert s.lists.containing(lst.items[0].model_id, UnitId(MLP, 1, 2)) == ["picks"]
    assert main(["list", "remove", "picks", *base, "--neuron", "4"]) == 0
    assert main(["list", "show", "picks", "--db", str(path)]) == 0
    out = capsys.readouterr().out
    assert "L1/N2" in out and "L1/N4" not in out
    assert main(["list", "delete", "picks", "--db", str(path)]) == 0
    assert main(["list", "show", "picks", "--db", str(path)]) == 2


def test_list_page_and_add_from_the_unit_page(db, monkeypatch):
    from cache.store import open_store
    from tests.helpers import open_page

    path, model = db
    at = open_page("neuron", path, monkeypatch, model=model, layer=0, neuron=3)
    assert not at.exception
    at.text_input(key="list_new").set_value("shared <set>")
    at.text_input(key="list_note").set_value("fires on *HTML*")
    next(b for b in at.button if b.label == "add").click().run()
    assert not at.exception and any("added to shared <set>" in m.value for m in at.success)
    at = open_page("neuron", path, monkeypatch, model=model, layer=1, neuron=7)
    at.selectbox(key="list_pick").set_value("shared <set>")
    next(b for b in at.button if b.label == "add").click().run()
    with open_store(path, read_only=True) as s:
        assert [i.unit for i in s.lists.get("shared <set>").items] == [UnitId(MLP, 0, 3), UnitId(MLP, 1, 7)]
    at = open_page("lists", path, monkeypatch, list="shared <set>")  # the list's URL
    assert not at.exception and at.title[0].value == "shared <set>"
    md = " ".join(m.value for m in at.markdown)
    assert "neuron=3" in md and "neuron=7" in md and r"fires on \*HTML\*" in md
    at.button[[b.label for b in at.button].index("prepare the static site (zip)")].click().run()
    assert not at.exception and at.get("download_button")
    at = open_page("lists", path, monkeypatch)
    assert any("lists?list=shared+%3Cset%3E" in m.value for m in at.markdown)
    at = open_page("lists", path, monkeypatch, list="nope")
    assert "no list named 'nope'" in at.error[0].value


def test_a_layer_as_a_static_site(db, tmp_path):
    path, model = db
    out = tmp_path / "site"
    assert site_main(["--layer", "0", "--neurons", "0-4", "--db", str(path), "--model", model, "--out", str(out),
                 "--quiet"]) == 0
    pages = sorted(p.name for p in (out / "units").iterdir())
    assert pages == [f"L0-N{i}.html" for i in range(5)]
    index = (out / "index.html").read_text()
    assert all(f'href="units/L0-N{i}.html"' in index for i in range(5)) and "<script" not in index
    assert site_main(["--db", str(path), "--out", str(out)]) == 2  # neither --list nor --layer
