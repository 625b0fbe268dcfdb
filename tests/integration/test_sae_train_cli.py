"""The SAE trainer's job through the CLI on a tiny model: it trains and saves, then finds the work done, and refuses
to overwrite an SAE it did not make."""

from __future__ import annotations

from analysis.sae.load import load_sae
from analysis.sae.saelens import save_sae

SEQ_LEN, SITE = 24, "resid_post"  # the windows' length the job is given; the site it trains on by default


def test_job_trains_saves_and_then_finds_it_done(tiny_folders, sae_train_corpus, tmp_path, capsys):
    from analysis.__main__ import main

    out = tmp_path / "sae"
    argv = ["sae", "train", "--model", str(tiny_folders["gpt2"]), "--layer", "1", "--width", "64", "--k", "4",
            "--tokens", "1500", "--eval-tokens", "300", "--corpus", str(sae_train_corpus), "--seq-len", str(SEQ_LEN),
            "--epochs", "2", "--batch-tokens", "256", "--checkpoint-every", "2", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "FVU" in printed and "loss recovered" in printed
    sae = load_sae(str(out))
    assert not (out / ".train_state.pt").exists()
    assert sae.meta["settings"]["width"] == 64 and sae.meta["settings"]["tokens"] == 1500
    assert 0 < sae.meta["fvu"] < 1 and sae.meta["l0"] <= 4 and "loss_recovered" in sae.meta
    assert 1000 < sae.meta["train_tokens"] <= 1500 and sae.layer == 1 and sae.site == SITE
    mtime = (out / "sae_weights.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    assert "nothing to do" in capsys.readouterr().err
    assert (out / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    # a folder saved before cfg.json had metadata.sae_lens_version: rewritten once, the same SAE
    import json

    cfg = json.loads((out / "cfg.json").read_text())
    del cfg["metadata"]["sae_lens_version"]
    (out / "cfg.json").write_text(json.dumps(cfg))
    assert main(argv) == 0
    assert "rewritten in the SAELens 6.x layout" in capsys.readouterr().err
    assert json.loads((out / "cfg.json").read_text())["metadata"]["sae_lens_version"]
    assert load_sae(str(out)).source == sae.source
    foreign = tmp_path / "foreign"
    save_sae(sae, foreign)  # an SAE without our training record
    assert main([*argv[:-2], str(foreign), "--quiet"]) == 2
    assert "did not make" in capsys.readouterr().err
