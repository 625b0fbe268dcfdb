"""The causal lens on a real harvest: effects over stored records, the CLI's JSON, the live and steer pages."""

from __future__ import annotations

import json

import pytest

from analysis.causal import Edit, ablate, effects
from analysis.models import load_model
from analysis.types import MLP, UnitId
from tests.helpers import all_html, open_page


def test_effects_sum_what_ablation_changes(tiny_folders, viewer_db):
    """The mean loss change over records equals the mean of per-record ablations' −Δlog p."""
    from analysis.jobs.reads import unit_record
    from cache.store import open_store

    db, model = viewer_db
    subject = load_model(str(tiny_folders["gpt2"]))
    unit = UnitId(MLP, 1, 3)
    with open_store(db, read_only=True) as s:
        rec = unit_record(s, model, unit)
    top, rnd = rec.most_positive_activation_records[:3], rec.random_sample[:2]
    e = effects(subject, unit, Edit(0.0, 0.0), "zero", top, rnd, batch_size=2)
    per = [ablate(subject, list(r.token_ids), unit, Edit(0.0, 0.0)) for r in top + rnd]
    deltas = [-d for a in per for d in a.delta]
    # each log p within float32's reach of the other computation's (batches of records, padded): 1e-5, relative
    # above magnitude 1, for the clean and the ablated one
    reach = [1e-5 * (max(1.0, abs(c)) + max(1.0, abs(x))) for a in per
             for c, x in zip(a.clean_logprob, a.ablated_logprob)]
    assert e.n_positions == len(deltas)
    assert e.mean_loss_change == pytest.approx(sum(deltas) / len(deltas), abs=sum(reach) / len(reach))
    assert len(e.promoted) == len(e.suppressed) == 10 and e.promoted[0][1] >= e.suppressed[0][1]


def test_cli_ablate_and_steer_json(viewer_db, capsys):
    from analysis.__main__ import main

    db, model = viewer_db
    base = ["--db", str(db), "--model", model, "--layer", "1", "--neuron", "3"]
    assert main(["ablate", *base, "--text", "Paris is the capital of France.", "--mode", "mean", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["delta_logprob_next"]) == len(out["tokens"]) - 1
    assert all(abs(d - (a - c)) < 1e-9 for d, a, c in zip(out["delta_logprob_next"], out["ablated_logprob_next"],
                                                           out["clean_logprob_next"]))
    assert out["edit"]["scale"] == 0.0 and out["top_changes"][0][0]["token"]
    assert main(["steer", *base, "--prompt", "The capital of France", "--clamp", "5", "--max-new-tokens", "6",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert len(out["plain_ids"]) == len(out["steered_ids"]) == 6 and out["seed"] == 0
    assert main(["steer", *base, "--prompt", " ", "--scale", "2"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["ablate", *base, "--text", "x y", "--mode", "value"]) == 2
    assert "--value" in capsys.readouterr().err


def test_live_ablation_and_steering_pages(viewer_db, monkeypatch):

    db, model = viewer_db
    at = open_page("live", db, monkeypatch, model=model, layer=1, neuron=3, text="Paris is the capital of France.",
               ablate="mean")
    assert not at.exception and not at.error
    assert any("What L1/N3 does to the predictions" in h.value for h in at.subheader)
    assert any("ablated − clean" in c.value for c in at.caption)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["token", "p clean", "p ablated", "Δp"] and len(table) == 8
    assert all_html(at).count('class="rec"') == 2  # the activations and the Δ log p heatmaps
    at = open_page("steer", db, monkeypatch, model=model, layer=1, neuron=3, prompt="The capital of <b>France</b>",
               how="clamp", k="30", new="8", go="1")
    assert not at.exception and not at.error
    body = all_html(at)
    assert body.count("&lt;b&gt;France&lt;/b&gt;") == 2 and "<b>France</b>" not in body  # escaped, both sides
    assert any("generated tokens the same" in c.value for c in at.caption)
    assert at.query_params["k"] == "30" and at.query_params["go"] == "1"  # the URL carries the settings
    at = open_page("steer", db, monkeypatch, model=model, layer=1, neuron=3, prompt="x", how="scale", k="nan", go="1")
    assert not at.exception and "usable number" in at.error[0].value


def test_effects_are_stored_and_shown(viewer_db, tmp_path, monkeypatch, capsys):
    import shutil

    from analysis.__main__ import main
    from cache.store import open_store

    src, model = viewer_db
    db = tmp_path / "effects.duckdb"
    shutil.copy(src, db)
    args = ["--db", str(db), "--model", model, "--layer", "1", "--neurons", "2,3", "--top", "3", "--random", "2"]
    assert main(["effects", *args]) == 0
    assert main(["effects", *args]) == 0
    assert "all 2 unit(s) done" in capsys.readouterr().err  # resumable
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        e = s.effects.get(run.run_id, UnitId(MLP, 1, 3))
    assert e.mode == "zero" and e.n_records == 5 and len(e.promoted) == 10 and e.params == {"top": 3, "random": 2}
    at = open_page("neuron", db, monkeypatch, model=model, layer=1, neuron=3, tab="ablation")
    assert not at.exception and not at.error
    assert "Δloss " in all_html(at) and any("Ablated (zero)" in m.value for m in at.markdown)
    at.toggle(key="abl_rec_on").set_value(True).run()
    assert not at.exception and list(at.dataframe[-1].value.columns)[0] == "token"
    with pytest.raises(SystemExit):  # argparse: zero or mean only
        main(["effects", *args[:-4], "--mode", "value"])
