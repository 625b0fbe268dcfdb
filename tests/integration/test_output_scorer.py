"""The output side of a unit through the real jobs and CLI on tiny random models: output-weights / output-effects
explanations, and the output scorer (the unit clamped at its typical high value) against plain HF forward passes
with hand-written hooks, a planted neuron, and numpy."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.__main__ import main
from analysis.types import MLP, UnitId
from tests.helpers import ATOL, random_topk_sae, tiny_model_folder


@pytest.fixture(scope="module")
def out_db(viewer_db, tmp_path_factory):
    db, model = viewer_db
    copy = tmp_path_factory.mktemp("output_scorer") / "o.duckdb"
    shutil.copy(db, copy)
    return copy, model, ["--db", str(copy), "--model", model, "--layer", "1"]


def _hand_delta(model, ids: list[int], n_prefix: int, edit_module, edit, is_pre: bool) -> torch.Tensor:
    """Mean over the tokens (BOS excluded) of log p edited - log p clean, ``[V]``: two plain HF forward passes, the
    second with ``edit`` (of the module's input or output, positions from ``n_prefix`` on) hooked by hand."""
    x = torch.tensor([ids])
    with torch.no_grad():
        clean = torch.log_softmax(model(input_ids=x).logits[0, n_prefix:].double(), -1)
        if is_pre:
            h = edit_module.register_forward_pre_hook(lambda _m, args: (edit(args[0]),))
        else:
            h = edit_module.register_forward_hook(lambda _m, _a, out: (edit(out[0]), *out[1:])
                                                  if isinstance(out, tuple) else edit(out))
        try:
            edited = torch.log_softmax(model(input_ids=x).logits[0, n_prefix:].double(), -1)
        finally:
            h.remove()
    return (edited - clean).mean(0)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
def test_batched_clamp_equals_a_plain_forward_with_a_hand_hook(tiny_folders, kind):
    from analysis.models import load_model
    from analysis.scorers.output import Clamp, clamped_sums

    subject = load_model(str(tiny_folders[kind]))
    model, V, n = subject.model, subject.model.get_output_embeddings().weight.shape[0], len(subject.bos_prefix)
    g = torch.Generator().manual_seed(3)
    windows = [torch.randint(5, 250, (length,), generator=g).tolist() for length in (12, 9, 12, 12)]
    clamps = [Clamp(3, 2.5, 0), Clamp(7, -1.0, 0), Clamp(3, 2.5, 1), Clamp(5, 4.0, 2), Clamp(3, 2.5, 3),
              Clamp(7, 3.0, 1), Clamp(11, 1.5, 0)]
    layer = 1
    # max_rows 3: windows split over forward passes, a window's clamps over two
    got = clamped_sums(subject, layer, windows, clamps, [np.arange(V)] * len(clamps), max_rows=3)
    blocks = {"gpt2": "transformer.h", "llama": "model.layers", "gemma": "model.layers"}[kind]
    block = model.get_submodule(blocks)[layer]
    proj = block.mlp.c_proj if kind == "gpt2" else block.mlp.down_proj

    for c, sums in zip(clamps, got):
        def clamp(a, c=c):
            a = a.clone()
            a[:, n:, c.unit] = c.value
            return a

        ref = _hand_delta(model, subject.bos_prefix + windows[c.window], n, proj, clamp, is_pre=True)
        np.testing.assert_allclose(sums / len(windows[c.window]), ref.numpy(), atol=ATOL)


def test_batched_feature_clamp_equals_a_hand_hook(tiny_folders):
    from analysis.models import load_model
    from analysis.scorers.output import Clamp, clamped_sums

    subject = load_model(str(tiny_folders["llama"]))
    sae = random_topk_sae(32, 64, 4, layer=1, site="resid_post")
    V = subject.model.get_output_embeddings().weight.shape[0]
    windows = [[5, 9, 30, 41, 7, 77], [8, 8, 120, 3, 60, 61]]
    clamps = [Clamp(10, 3.0, 0), Clamp(20, 5.0, 0), Clamp(10, 3.0, 1)]
    got = clamped_sums(subject, 1, windows, clamps, [np.arange(V)] * 3, sae=sae)
    block = subject.model.model.layers[1]
    for c, sums in zip(clamps, got):
        def move(h, c=c):  # h + (value - a) d, a the feature's encoding: the rest of h (the error) kept
            a = torch.topk(torch.relu((h - sae.b_dec) @ sae.W_enc + sae.b_enc), 4, dim=-1)
            dense = torch.zeros(*h.shape[:-1], 64).scatter(-1, a.indices, a.values)
            return h + (c.value - dense[..., c.unit])[..., None] * sae.W_dec[c.unit]

        ref = _hand_delta(subject.model, windows[c.window], 0, block, move, is_pre=False)
        np.testing.assert_allclose(sums / len(windows[c.window]), ref.numpy(), atol=ATOL)


def _score_json(capsys, args) -> tuple[int, list[dict]]:
    capsys.readouterr()
    code = main(["score", *args, "--scorer", "output", "--json", "--quiet"])
    out = json.loads(capsys.readouterr().out)
    return code, out if isinstance(out, list) else [out]


def test_a_planted_neuron_scores_the_token_it_writes(viewer_db, tmp_path, capsys):
    """A neuron of the last layer whose output column is a large multiple of one token's unembedding row (through
    the final norm's gain): an explanation naming that token scores AUROC 1; one naming the tokens that direction
    lowers most scores below chance."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tiny_model_folder(tmp_path / "planted", "llama", seed=5)
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    (target,) = tok("alert", add_special_tokens=False).input_ids
    layer, neuron = 2, 7
    W_U, gain = model.lm_head.weight.detach(), model.model.norm.weight.detach()
    direction = W_U[target] / gain
    with torch.no_grad():
        model.model.layers[layer].mlp.down_proj.weight[:, neuron] = 200 * direction / direction.norm()
    model.save_pretrained(folder)
    db = tmp_path / "p.duckdb"
    corpus = Path(viewer_db[0]).parent / "docs.jsonl"
    assert main(["harvest", "--model", str(folder), "--corpus", str(corpus), "--db", str(db), "--layers", "2",
                 "--seq-len", "24", "--quiet"]) == 0
    from analysis.scorers.output import typical_high
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        rec = s.records.unit_record(s.runs.find(str(folder), layer), UnitId(MLP, layer, neuron))
    assert typical_high(rec) > 0  # the clamp raises what the column writes
    args = ["--db", str(db), "--model", str(folder), "--layer", "2", "--neuron", str(neuron)]
    code, (hit,) = _score_json(capsys, [*args, "--explanation", "the token 'alert'"])
    assert code == 0 and hit["score"] == pytest.approx(1.0)
    assert [e["token_id"] for e in hit["examples"] if e["label"] == 1] == [target]
    assert hit["n_neg"] == 3 and hit["metrics"]["z"]["value"] > 3
    lowered = np.argsort((W_U @ (gain * direction)).numpy())
    names = [tok.decode([t]) for t in lowered if t > 2 and len(tok.decode([t]).strip()) > 1][:3]
    code, (miss,) = _score_json(capsys, [*args, "--explanation", ", ".join(map(repr, names))])
    assert code == 0 and miss["score"] < 0.5


def test_an_explanation_naming_no_token_is_not_applicable(out_db, capsys):
    _db, _model, args = out_db
    code, (r,) = _score_json(capsys, [*args, "--neuron", "2", "--explanation", "qqzx vvkj"])
    assert code == 1 and r["score"] is None and "names no token" in r["error"] and "does not apply" in r["error"]


def test_output_weights_name_the_top_tokens_of_numpy(out_db):
    db, model, args = out_db
    assert main(["explain", *args, "--neurons", "0-5", "--explainer", "output-weights", "--quiet"]) == 0
    from transformers import AutoModelForCausalLM

    from cache.store import open_store

    hf = AutoModelForCausalLM.from_pretrained(model)
    w_out = hf.transformer.h[1].mlp.c_proj.weight.detach().double().numpy()  # Conv1D: [d_mlp, d]
    g = hf.transformer.ln_f.weight.detach().double().numpy()
    W_U = hf.lm_head.weight.detach().double().numpy()
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        vocab = s.catalog.vocab(s.catalog.model(model).tokenizer_id)
        for u in range(6):
            (e,) = [e for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u)) if e.explainer == "output-weights"]
            scores = W_U @ (g * w_out[u])
            order = np.argsort(-scores)
            ranked = np.sort(scores)
            assert min(np.diff(ranked[:6]).min(), np.diff(ranked[-6:]).min()) > ATOL  # no near-tie to break
            top, low = [repr(vocab[t]) for t in order[:5]], [repr(vocab[t]) for t in order[::-1][:5]]
            assert e.text == f"promotes {', '.join(top)}; suppresses {', '.join(low)}"
            assert e.params == {"side": "output", "k": 5}
    assert main(["explain", *args, "--neurons", "0-5", "--explainer", "output-weights", "--quiet"]) == 0  # resumes


def test_output_effects_explanations_only_where_effects_are_stored(out_db, capsys):
    db, model, args = out_db
    assert main(["effects", *args, "--neurons", "0-1", "--top", "2", "--random", "2", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["explain", *args, "--neurons", "0-3", "--explainer", "output-effects", "--quiet"]) == 0
    assert "2 unit(s) have no stored ablation effects" in capsys.readouterr().err
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        vocab = s.catalog.vocab(s.catalog.model(model).tokenizer_id)
        for u in range(4):
            exps = [e for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u)) if e.explainer == "output-effects"]
            if u >= 2:
                assert not exps
                continue
            eff = s.effects.get(run.run_id, UnitId(MLP, 1, u))
            assert exps[0].text == ("promotes " + ", ".join(repr(vocab[t]) for t, _v in eff.promoted[:5]) +
                                    "; suppresses " + ", ".join(repr(vocab[t]) for t, _v in eff.suppressed[:5]))


def test_score_output_over_stored_explanations(out_db, capsys):
    """``score --scorer output`` scores the stored output-weights explanations, stores each verdict and resumes;
    a named token's prediction is its mean change in log-probability with the neuron clamped at the median of its
    top records' maxima over its first 8 random records, by hand."""
    db, model, args = out_db
    assert main(["explain", *args, "--neurons", "0-3", "--explainer", "output-weights", "--quiet"]) == 0
    code, printed = _score_json(capsys, [*args, "--neurons", "0-3"])
    failed = [p for p in printed if p["error"]]  # "qqzx vvkj" on neuron 2 where the test above ran first
    assert code == (1 if failed else 0) and all(p["explanation"] == "qqzx vvkj" for p in failed)
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        exps = [e for u in range(4) for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u))
                if e.explainer == "output-weights"]
        kept = s.scorer_results.of_explanations([e.explanation_id for e in exps], examples=True)
        rec = s.records.unit_record(run, UnitId(MLP, 1, 0))
    assert len(exps) == 4 and all(len([x for x in kept[e.explanation_id] if x.scorer == "output"]) == 1 for e in exps)
    assert all(0 <= x.score <= 1 and x.lo <= x.score <= x.hi for e in exps for x in kept[e.explanation_id])
    first = next(x for x in kept[exps[0].explanation_id])
    assert first.n_pos >= 1 and first.n_neg == 3 * first.n_pos and first.params["records"] == 8

    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model)
    value = float(np.median([max(r.activations) for r in rec.most_positive_activation_records]))

    def clamp(a):
        a = a.clone()
        a[:, :, 0] = value
        return a

    per_record = [(_hand_delta(hf, list(r.token_ids), 0, hf.transformer.h[1].mlp.c_proj, clamp, True),
                   len(r.token_ids)) for r in rec.random_sample[:8]]
    delta = sum(d * n for d, n in per_record) / sum(n for _d, n in per_record)
    for ex in first.examples:
        assert ex["prediction"] == pytest.approx(float(delta[ex["token_id"]]), abs=ATOL)
    capsys.readouterr()
    code, again = _score_json(capsys, [*args, "--neurons", "0-3"])  # the rest stored: only the failed one again
    assert sum(not p.get("stored") for p in again) == len(failed) and len(again) == len(printed)


def test_named_strings_and_frequency_matched_controls():
    from analysis.scorers.output import control_tokens, frequency_order, named_strings

    assert named_strings("promotes ' Paris', ' France'; suppresses ' the', ' a'") == [" Paris", " France"]
    assert named_strings("lowers 'x'; raises 'y' and \"it's\"") == ["y", "it's"]
    assert named_strings("the model's output: don't 'x', '\\n'") == ["x", "\n"]
    assert named_strings("numbers and the dates of tokens") == ["numbers", "dates"]
    assert named_strings("   ") == [] and named_strings("the and of") == []
    counts = {10: 50, 11: 40, 12: 40, 13: 30, 14: 20, 15: 10, 16: 5}
    order = frequency_order(counts, range(10, 18))  # 17 never occurs: last
    assert order == [10, 11, 12, 13, 14, 15, 16, 17]
    eligible = set(order) - {16}  # a special token is never a control
    # 13 (rank 3): ranks 2 and 4 first (the more frequent first), then 1; 15 (rank 5): 6 is special, then 7, 0
    assert control_tokens([13, 15], order, eligible) == [[12, 14, 11], [17, 10]]
