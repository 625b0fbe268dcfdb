"""The CLI end to end on a tiny model: harvest, export, resume after a hard kill, and clear errors."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from analysis.__main__ import build_parser, main
from tests.helpers import REPO, TINY_TEXT



@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory) -> Path:
    rng = random.Random(0)
    path = tmp_path_factory.mktemp("corpus") / "docs.jsonl"
    with open(path, "w") as f:
        for i in range(30):
            text = " ".join(rng.choice(TINY_TEXT) for _ in range(12))
            f.write(json.dumps({"title": f"doc {i}", "text": text}) + "\n")
    return path


def _harvest_args(model: Path, corpus: Path, db: Path, *extra: str) -> list[str]:
    return ["harvest", "--model", str(model), "--corpus", str(corpus), "--db", str(db), "--layers", "0,2",
            "--seq-len", "16", "--top-k", "4", "--batch-size", "2", "--quiet", *extra]


def _dump(db: Path) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    out = {}
    for table, order in [("unit_stats", "layer, unit"), ("records", "layer, unit, window_id"),
                         ("samples", "layer, unit, kind, bin, rank"), ("token_means", "layer, unit, token_id"),
                         ("windows", "window_id")]:
        out[table] = con.execute(f"SELECT * FROM {table} ORDER BY {order}").fetchall()
    out["runs"] = con.execute("SELECT run_id, status, n_tokens FROM runs").fetchall()
    con.close()
    return out


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in commands:
        with pytest.raises(SystemExit) as exc:
            main([name, "--help"])
        assert exc.value.code == 0
        assert "usage" in capsys.readouterr().out


def test_harvest_then_export_openai_fields(tiny_folders, corpus_file, tmp_path, capsys):
    db = tmp_path / "h.duckdb"
    assert main(_harvest_args(tiny_folders["gpt2"], corpus_file, db)) == 0
    assert main(["export", "--db", str(db), "--model", str(tiny_folders["gpt2"]), "--layer", "2", "--neuron", "5"]) == 0
    rec = json.loads(capsys.readouterr().out)
    for key in ("most_positive_activation_records", "random_sample", "random_sample_by_quantile", "quantile_boundaries",
                "mean", "stddev", "skewness", "kurtosis", "max_activation", "histogram", "model_id", "corpus_id",
                "hook_point"):
        assert key in rec, key
    top = rec["most_positive_activation_records"]
    assert len(top) == 4 and all(set(r) >= {"tokens", "activations", "token_ids"} for r in top)
    assert max(top[0]["activations"]) == pytest.approx(rec["max_activation"], rel=1e-3)
    assert rec["hook_point"] == "transformer.h.2.mlp.c_proj:input"
    # a second identical harvest is recognised, not redone
    assert main(_harvest_args(tiny_folders["gpt2"], corpus_file, db)) == 0
    assert "already harvested" in capsys.readouterr().err


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["crash", "ctrl-c"])
def test_resume_after_kill_equals_uninterrupted_run(tiny_folders, corpus_file, tmp_path, sig):
    model = tiny_folders["llama"]
    full_db, cut_db = tmp_path / "full.duckdb", tmp_path / "cut.duckdb"
    assert main(_harvest_args(model, corpus_file, full_db, "--checkpoint-seconds", "0", "--batch-size", "2")) == 0
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "analysis", *_harvest_args(model, corpus_file, cut_db, "--checkpoint-seconds", "0", "--batch-size", "2")]
    # Ctrl-C's default handling in the child even when these tests run as a background job (`cmd &` starts them
    # with SIGINT ignored, which a child inherits: it then ignores the signal and finishes)
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ckpt_dir = cut_db.with_name(cut_db.name + ".harvest")
    deadline = time.monotonic() + 120
    while not (ckpt_dir.exists() and any(ckpt_dir.glob("*.pt"))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(sig)
    code = proc.wait(timeout=60)
    err = proc.stderr.read()
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL, "the harvest finished before it could be interrupted"
    else:
        assert code == 130 and "run the same command again to resume" in err and "Traceback" not in err, err
    assert _dump(cut_db)["runs"][0][1] == "running"
    assert main(_harvest_args(model, corpus_file, cut_db, "--checkpoint-seconds", "0", "--batch-size", "2")) == 0
    full, cut = _dump(full_db), _dump(cut_db)
    assert cut["runs"][0][1] == "done"
    for table in full:
        assert cut[table] == full[table], table
    assert not ckpt_dir.exists()


@pytest.mark.parametrize("args, message", [
    (["harvest", "--model", "./no/such/model", "--quiet"], "model folder not found"),
    (["harvest", "--max-tokens", "0"], "--max-tokens must be"),
    (["harvest", "--corpus", "/no/such/corpus.txt"], "unknown corpus"),
    (["harvest", "--layers", "0,99"], "the model has layers 0..29"),
    (["export", "--layer", "0", "--neuron", "0"], "no database at"),
])
def test_user_errors_are_messages_not_tracebacks(args, message, tmp_path, capsys):
    code = main([*args, "--db", str(tmp_path / "e.duckdb")])
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    assert message in err


def test_export_of_unknown_layer_or_neuron(tiny_folders, corpus_file, tmp_path, capsys):
    db = tmp_path / "u.duckdb"
    assert main(_harvest_args(tiny_folders["neox"], corpus_file, db)) == 0
    name = str(tiny_folders["neox"])
    assert main(["export", "--db", str(db), "--model", name, "--layer", "7", "--neuron", "0"]) == 2
    assert "layer 7 does not exist" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--model", name, "--layer", "1", "--neuron", "0"]) == 2
    assert "has not been harvested" in capsys.readouterr().err
    assert main(["export", "--db", str(db), "--model", name, "--layer", "0", "--neuron", "4800"]) == 2
    assert "neuron 4800 does not exist" in capsys.readouterr().err
    corrupt = tmp_path / "corrupt.duckdb"
    corrupt.write_bytes(b"\0garbage" * 1000)
    assert main(["export", "--db", str(corrupt), "--model", name, "--layer", "0", "--neuron", "0"]) == 2
    assert "not a readable DuckDB database" in capsys.readouterr().err


def test_attribute_prints_the_report(viewer_db, capsys):
    """`attribute` on a real harvest: the JSON report names the model's own top prediction as the target, lists
    units of every layer source at real positions, and checks the top ones by ablation; the text form prints the
    same target."""
    import torch

    from analysis.models import load_model

    db, model = viewer_db
    text = "the cat sat on the mat and the dog"
    assert main(["attribute", "--db", str(db), "--model", model, "--text", text, "--check", "4", "--top", "5",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    subject = load_model(model)
    ids = subject.bos_prefix + subject.tokenize(text)
    with torch.inference_mode():
        top = int(subject.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())
    assert out["token_ids"] == ids and out["target"]["token_id"] == top
    assert out["target"]["position"] == len(ids) - 1
    assert 0 < len(out["attribution"]["positive"]) <= 5 and len(out["check"]["units"]) == 4
    assert all(1 <= u["position"] < len(ids) for u in out["fires"])  # the first token is left out by default
    assert main(["attribute", "--db", str(db), "--model", model, "--text", text, "--check", "0"]) == 0
    assert f"target: logit of {out['target']['token']!r}" in capsys.readouterr().out
    assert main(["attribute", "--db", str(db), "--model", model, "--text", "  "]) == 2
    assert "the text is empty" in capsys.readouterr().err
