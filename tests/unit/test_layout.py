"""The data folder: a checkout with the old layout (data products inside the cache/ package) is moved, not rebuilt."""

import os

import pytest

from analysis import config
from tests.helpers import old_checkout


def test_old_layout_moves_everything_but_the_code(tmp_path):
    old = old_checkout(tmp_path)
    new = tmp_path / "data"
    moved = config.move_old_layout(old, new)
    assert sorted(moved) == ["demo.duckdb", "demo.duckdb.build.log", "demo.duckdb.harvest", "models", "wheels"]
    assert (new / "models" / "smollm2-135m" / "config.json").read_text() == "{}"
    assert (new / "demo.duckdb").read_bytes() == b"db"
    assert (new / "wheels" / ".gensim").exists()
    assert sorted(p.name for p in old.iterdir()) == ["store.py"]
    assert config.move_old_layout(old, new) == []  # a second run finds nothing to move


def test_old_layout_keeps_what_would_overwrite(tmp_path, capsys):
    old = old_checkout(tmp_path)
    new = tmp_path / "data"
    new.mkdir()
    (new / "demo.duckdb").write_bytes(b"newer")
    moved = config.move_old_layout(old, new)
    assert "demo.duckdb" not in moved and (new / "demo.duckdb").read_bytes() == b"newer"
    assert (old / "demo.duckdb").read_bytes() == b"db"
    assert "left in place" in capsys.readouterr().err


def test_old_layout_waits_for_a_running_build(tmp_path):
    old = old_checkout(tmp_path)
    (old / "demo.duckdb.build.pid").write_text(str(os.getpid()))  # a live process
    with pytest.raises(SystemExit, match="still runs"):
        config.move_old_layout(old, tmp_path / "data")
    assert (old / "demo.duckdb").exists() and not (tmp_path / "data").exists()


def test_a_moved_sae_folder_is_found(tmp_path, monkeypatch):
    old = tmp_path / "cache"
    monkeypatch.setattr(config, "OLD_DATA", old)
    monkeypatch.setenv("NEURON_VIEWER_HOME", str(tmp_path / "data"))
    (tmp_path / "data" / "saes" / "x").mkdir(parents=True)
    assert config.relocated(str(old / "saes" / "x")) == tmp_path / "data" / "saes" / "x"
    assert config.relocated(str(tmp_path / "elsewhere")) == tmp_path / "elsewhere"
