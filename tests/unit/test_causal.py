"""The causal lens: interventions on neurons and features, checked against independent computations."""

from __future__ import annotations

import json

import pytest
import torch

from analysis.causal import Edit, ablate, ablation_edit, effects, generate, steer, steering_edit, unit_edit
from analysis.types import MLP, UnitId, UserError

KINDS = ("gpt2", "llama", "gemma", "neox")


@pytest.fixture(scope="module")
def subjects(tiny_folders):
    from analysis.models import load_model

    return {k: load_model(str(tiny_folders[k])) for k in KINDS}


def _ids(subject, text="The quick brown fox jumps over the lazy dog. Paris is the capital of France."):
    return subject.tokenize(text)


def _logits(subject, ids):
    with torch.inference_mode():
        return subject.model(input_ids=torch.tensor([subject.bos_prefix + ids]), use_cache=False).logits


@pytest.mark.parametrize("kind", KINDS)
def test_keeping_the_clean_value_changes_nothing_bit_for_bit(subjects, kind):
    subject = subjects[kind]
    ids = _ids(subject)
    plain = _logits(subject, ids)
    with unit_edit(subject, UnitId(MLP, 1, 5), Edit(1.0, 0.0)):
        same = _logits(subject, ids)
    assert torch.equal(plain, same)
    a = ablate(subject, ids, UnitId(MLP, 1, 5), Edit(1.0, 0.0))
    assert a.clean_logprob == a.ablated_logprob  # the two rows of one batch


@pytest.mark.parametrize("kind", KINDS)
def test_neuron_ablation_equals_an_independent_computation(subjects, kind):
    """Zeroing neuron n of layer L at the out-projection's input = subtracting a_n · W_out[:, n] from the MLP's
    output (computed from the activations and the weights, by a hook on the MLP module itself)."""
    from analysis.activations import mlp_activations

    subject = subjects[kind]
    ids, layer, n = _ids(subject), 1, 7
    x = torch.tensor([subject.bos_prefix + ids])
    a_n = mlp_activations(subject, x, None, [layer])[layer][0, :, n]
    w = subject.out_proj(layer).weight.detach().float()  # nn.Linear [d_model, d_mlp]; GPT-2's Conv1D [d_mlp, d_model]
    w_col = w[n] if type(subject.out_proj(layer)).__name__ == "Conv1D" else w[:, n]

    def by_hand(_module, _args, output):
        out = output[0] if isinstance(output, tuple) else output
        out = out - (a_n[:, None] * w_col[None, :]).to(out.dtype)[None]
        return (out, *output[1:]) if isinstance(output, tuple) else out

    handle = subject.blocks()[layer].mlp.register_forward_hook(by_hand)
    try:
        with torch.inference_mode():
            want = torch.log_softmax(subject.model(input_ids=x, use_cache=False).logits.float(), -1)
    finally:
        handle.remove()
    got = ablate(subject, ids, UnitId(MLP, layer, n), ablation_edit("zero"))
    nxt = torch.tensor(ids[1:])
    start = len(subject.bos_prefix)
    want_next = want[0, start:-1].gather(-1, nxt[:, None])[:, 0]
    assert torch.allclose(torch.tensor(got.ablated_logprob), want_next, atol=1e-5)
    assert got.activations == pytest.approx(a_n[start:].tolist(), abs=1e-5)
    assert any(abs(d) > 1e-6 for d in got.delta)  # the neuron matters somewhere (the test can fail)


def test_feature_edit_keeps_the_error_term_and_moves_along_its_direction(subjects):
    from conftest import random_topk_sae

    subject = subjects["llama"]
    sae = random_topk_sae(subject.d_model, 64, 8, layer=1, site="resid_post")
    ids = _ids(subject)
    unit = UnitId(sae.source, 1, 3)
    plain = _logits(subject, ids)
    with unit_edit(subject, unit, Edit(1.0, 0.0), sae):
        assert torch.equal(_logits(subject, ids), plain)
    # adding 2 along the decoder direction, by hand: the block's output plus 2 · W_dec[3]
    d = sae.W_dec[3] / sae.input_scale

    def by_hand(_module, _args, output):
        return (output[0] + 2.0 * d, *output[1:]) if isinstance(output, tuple) else output + 2.0 * d

    handle = subject.blocks()[1].register_forward_hook(by_hand)
    try:
        want = _logits(subject, ids)
    finally:
        handle.remove()
    with unit_edit(subject, unit, Edit(1.0, 2.0), sae):
        got = _logits(subject, ids)
    assert torch.allclose(got, want, atol=1e-5) and not torch.allclose(got, plain, atol=1e-3)


def test_hooks_never_leak(subjects):
    subject = subjects["gpt2"]
    ids = _ids(subject)
    plain = _logits(subject, ids)
    with pytest.raises(RuntimeError, match="boom"):
        with unit_edit(subject, UnitId(MLP, 0, 1), Edit(0.0, 50.0)):
            assert not torch.equal(_logits(subject, ids), plain)
            raise RuntimeError("boom")
    assert torch.equal(_logits(subject, ids), plain)
    with pytest.raises(UserError, match="not a usable number"):
        with unit_edit(subject, UnitId(MLP, 0, 1), Edit(float("nan"), 0.0)):
            pass
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in subject.model.modules())


def test_steering_zero_is_plain_and_a_seed_repeats(subjects):
    subject = subjects["llama"]
    prompt = _ids(subject, "Paris is the capital of")
    unit = UnitId(MLP, 1, 2)
    s = steer(subject, prompt, unit, steering_edit(unit, 3.0, scale=1.0), max_new_tokens=12)
    assert s.steered == s.plain and len(s.plain) == 12
    assert s.plain == generate(subject, prompt, 12, 0.0, 0)  # greedy = the plain model's own generation
    hot = steer(subject, prompt, unit, steering_edit(unit, 3.0, clamp=40.0), max_new_tokens=12, temperature=1.0,
                seed=5)
    again = steer(subject, prompt, unit, steering_edit(unit, 3.0, clamp=40.0), max_new_tokens=12, temperature=1.0,
                  seed=5)
    assert hot.steered == again.steered and hot.plain == again.plain
    assert hot.steered != hot.plain  # a clamp of 40 x max moves the tiny model (the test can fail)


def test_bad_input_gets_messages(subjects):
    subject = subjects["gpt2"]
    unit = UnitId(MLP, 0, 1)
    with pytest.raises(UserError, match="at least two tokens"):
        ablate(subject, _ids(subject, "a")[:1], unit, Edit(0.0, 0.0))
    with pytest.raises(UserError, match="context"):
        ablate(subject, _ids(subject) * 20, unit, Edit(0.0, 0.0))
    with pytest.raises(UserError, match="empty"):
        generate(subject, [], 4, 0.0, 0)
    for bad in (float("inf"), float("nan"), 1e9):
        with pytest.raises(UserError, match="usable number"):
            steering_edit(unit, 2.0, clamp=bad)
    with pytest.raises(UserError, match="does not exist"):
        ablate(subject, _ids(subject), UnitId(MLP, 0, 10_000), Edit(0.0, 0.0))
    with pytest.raises(UserError, match="layer 9 does not exist"):
        ablate(subject, _ids(subject), UnitId(MLP, 9, 0), Edit(0.0, 0.0))


def test_effects_sum_what_ablation_changes(subjects, viewer_db):
    """The mean loss change over records equals the mean of per-record ablations' −Δlog p."""
    from analysis.jobs.reads import unit_record
    from cache.store import open_store

    db, model = viewer_db
    subject = subjects["gpt2"]
    unit = UnitId(MLP, 1, 3)
    with open_store(db, read_only=True) as s:
        rec = unit_record(s, model, unit)
    top, rnd = rec.most_positive_activation_records[:3], rec.random_sample[:2]
    e = effects(subject, unit, Edit(0.0, 0.0), "zero", top, rnd, batch_size=2)
    per = [ablate(subject, list(r.token_ids), unit, Edit(0.0, 0.0)) for r in top + rnd]
    deltas = [-d for a in per for d in a.delta]
    assert e.n_positions == len(deltas) and e.mean_loss_change == pytest.approx(sum(deltas) / len(deltas), abs=1e-5)
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


@pytest.mark.parametrize("kind", KINDS)
def test_the_shared_prefix_changes_nothing(subjects, kind):
    """Running the blocks before the unit's layer once (then two rows) gives what two full rows give."""
    subject = subjects[kind]
    ids, unit = _ids(subject), UnitId(MLP, 2, 4)
    got = ablate(subject, ids, unit, Edit(0.0, 3.0))
    x = torch.tensor([subject.bos_prefix + ids] * 2)
    with torch.inference_mode(), unit_edit(subject, unit, Edit(0.0, 3.0), rows=torch.tensor([False, True])):
        full = torch.log_softmax(subject.model(input_ids=x, use_cache=False).logits.float(), -1)
    nxt = torch.tensor(ids[1:])
    start = len(subject.bos_prefix)
    for row, mine in ((0, got.clean_logprob), (1, got.ablated_logprob)):
        want = full[row, start:-1].gather(-1, nxt[:, None])[:, 0]
        assert torch.allclose(torch.tensor(mine), want, atol=1e-5), (kind, row)
    assert torch.allclose(torch.tensor(got.clean_logprob), torch.log_softmax(_logits(subject, ids).float(), -1)[
        0, start:-1].gather(-1, nxt[:, None])[:, 0], atol=1e-5)


def test_live_ablation_and_steering_pages(viewer_db, monkeypatch):
    from test_viewer import _all_html, _page

    db, model = viewer_db
    at = _page("live", db, monkeypatch, model=model, layer=1, neuron=3, text="Paris is the capital of France.",
               ablate="mean")
    assert not at.exception and not at.error
    assert any("What L1/N3 does to the predictions" in h.value for h in at.subheader)
    assert any("ablated − clean" in c.value for c in at.caption)
    table = at.dataframe[-1].value
    assert list(table.columns) == ["token", "p clean", "p ablated", "Δp"] and len(table) == 8
    assert _all_html(at).count('class="rec"') == 2  # the activations and the Δ log p heatmaps
    at = _page("steer", db, monkeypatch, model=model, layer=1, neuron=3, prompt="The capital of <b>France</b>",
               how="clamp", k="30", new="8", go="1")
    assert not at.exception and not at.error
    body = _all_html(at)
    assert body.count("&lt;b&gt;France&lt;/b&gt;") == 2 and "<b>France</b>" not in body  # escaped, both sides
    assert any("generated tokens the same" in c.value for c in at.caption)
    assert at.query_params["k"] == "30" and at.query_params["go"] == "1"  # the URL carries the settings
    at = _page("steer", db, monkeypatch, model=model, layer=1, neuron=3, prompt="x", how="scale", k="nan", go="1")
    assert not at.exception and "usable number" in at.error[0].value


def test_effects_are_stored_and_shown(viewer_db, tmp_path, monkeypatch, capsys):
    import shutil

    from analysis.__main__ import main
    from cache.store import open_store
    from test_viewer import _all_html, _page

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
    at = _page("neuron", db, monkeypatch, model=model, layer=1, neuron=3, tab="ablation")
    assert not at.exception and not at.error
    assert "Δloss " in _all_html(at) and any("Ablated (zero)" in m.value for m in at.markdown)
    at.toggle(key="abl_rec_on").set_value(True).run()
    assert not at.exception and list(at.dataframe[-1].value.columns)[0] == "token"
    with pytest.raises(SystemExit):  # argparse: zero or mean only
        main(["effects", *args[:-4], "--mode", "value"])
