"""The TopK SAE trainer and the SAE quality numbers, on tiny random models: activations against each window run
alone, training that learns, exact resume, save/load, FVU/L0 and losses against independent numpy/torch
computations, hooks that always go away, the job's options."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.activations import site_activations
from analysis.corpus import load_corpus, make_windows, select_windows
from analysis.models import load_model
from analysis.progress import Progress
from analysis.sae.baselines import baseline_dictionary
from analysis.sae.load import load_sae
from analysis.sae.model import MASSIVE, SAE
from analysis.sae.saelens import save_sae
from analysis.sae_eval import evaluate_sae, replaced_site
from analysis.sae_train import TrainConfig, collect_activations, fit_topk, train_topk_sae, used_positions
from tests.sae_helpers import topk_ambiguous

LAYER, SITE, SEQ_LEN = 1, "resid_post", 24
CFG = TrainConfig(width=64, k=4, epochs=8, batch_tokens=256, lr=1e-2, dead_tokens=512, seed=3)


@pytest.fixture(scope="module")
def subject(tiny_folders):
    return load_model(str(tiny_folders["gpt2"]))


@pytest.fixture(scope="module")
def split(subject, sae_train_corpus):
    """(train windows, held-out windows): ~3,000 and ~600 tokens."""
    windows = list(make_windows(load_corpus(str(sae_train_corpus)).documents, subject.tokenizer, SEQ_LEN))
    held_out = select_windows(windows, 600, seed=0)
    ids = {w.window_id for w in held_out}
    train = select_windows([w for w in windows if w.window_id not in ids], 3000, seed=0)
    return train, held_out


@pytest.fixture(scope="module")
def acts(subject, split):
    return collect_activations(subject, split[0], LAYER, SITE, batch_size=8, progress=Progress(False))


@pytest.fixture(scope="module")
def fit(acts):
    return fit_topk(acts, CFG, progress=Progress(False))


def _sae_of(fit, subject) -> SAE:
    return SAE(W_enc=fit.W_enc, b_enc=fit.b_enc, W_dec=fit.W_dec, b_dec=fit.b_dec, architecture="topk", k=CFG.k,
               layer=LAYER, site=SITE, apply_b_dec_to_input=True, model_name=subject.info.name)


def _alone(subject, windows, layer, site) -> list[np.ndarray]:
    """Each window run alone (no padding): the site vectors of its tokens (after the BOS column if any)."""
    out = []
    for w in windows:
        enc = subject.encode([list(w.token_ids)])
        a = site_activations(subject, enc.input_ids, None, [(layer, site)])[(layer, site)]
        out.append(a[0, enc.n_prefix :].double().numpy())
    norms = np.linalg.norm(np.concatenate(out), axis=1)
    assert norms.max() < 0.5 * MASSIVE * np.median(norms)  # no massive activations in the tiny models
    return out


@pytest.mark.parametrize("bos", [False, True])
def test_activations_are_the_real_tokens_of_each_window_alone(subject, split, tmp_path, bos):
    """Padding and the BOS column (where the model has one) are skipped; every real token is kept."""
    from tests.helpers import tiny_model_folder

    model = subject if not bos else load_model(str(tiny_model_folder(tmp_path / "llama-bos", "llama", bos=True)))
    windows = split[1][:7]
    got = collect_activations(model, windows, LAYER, SITE, batch_size=3, progress=Progress(False))
    expected = np.concatenate(_alone(model, windows, LAYER, SITE))
    assert len(expected) == sum(len(w.token_ids) for w in windows)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_massive_activations_are_left_out(subject):
    """Vectors longer than MASSIVE x the median norm of the batch's real tokens are not used (attention sinks)."""
    enc = subject.encode([[5, 6, 7, 8], [9, 10]])
    acts = torch.ones(2, 4, 3)
    acts[0, 0] *= 1.01 * MASSIVE  # just over the bound: a sink
    acts[1, 1] *= 0.99 * MASSIVE  # just under it: kept
    acts[1, 2:] = float("nan")  # padding holds garbage
    assert used_positions(acts, enc).tolist() == [[False, True, True, True], [True, True, False, False]]


def test_training_lowers_the_loss_and_reaches_a_low_fvu(subject, split, acts, fit):
    """The training loss (FVU) falls every epoch, the decoder rows stay unit-norm, and on held-out windows the SAE
    beats PCA with k components. The bound: 2k features with k active can already express the rank-k PCA
    reconstruction (a feature for each sign of each component), so 64 features must do better: at most 0.8 of
    PCA's FVU (which is ~0.48 here: the tiny model's 32 dimensions are far from low-rank; the SAE reaches ~0.27)."""
    assert fit.loss_by_epoch == sorted(fit.loss_by_epoch, reverse=True) and len(fit.loss_by_epoch) == CFG.epochs
    assert fit.loss_by_epoch[-1] < 0.6 * fit.loss_by_epoch[0]
    torch.testing.assert_close(fit.W_dec.norm(dim=1), torch.ones(CFG.width))
    x = acts.double().numpy()
    s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
    pca_fvu = 1 - s[: CFG.k].sum() / s.sum()
    q = evaluate_sae(subject, _sae_of(fit, subject), split[1], batch_size=8, progress=Progress(False))
    assert pca_fvu > 0.4
    assert q.fvu < 0.8 * pca_fvu, (q.fvu, pca_fvu)
    assert q.l0 <= CFG.k  # (no loss ordering: a random model predicts worse than uniform, zeroed or not)


class _Interrupt(Exception):
    pass


class _StopAt(Progress):
    """Bars that raise once the training bar reaches ``step`` (an interruption mid-run)."""

    def __init__(self, step: int):
        super().__init__(enabled=False)
        self.step = step
        self.initial = None

    def bar(self, total, desc, unit="it", initial=0, **kwargs):
        if not desc.startswith("train"):
            return super().bar(total, desc, unit, initial, **kwargs)
        self.initial = initial
        progress = self

        class Bar:
            n = initial

            def update(self, k=1):
                self.n += k
                if self.n == progress.step:
                    raise _Interrupt

            def set_postfix(self, **_kwargs):
                pass

            def close(self):
                pass

        return Bar()


def test_an_interrupted_run_resumes_to_the_same_weights(acts, tmp_path):
    """Interrupted at step 29 with checkpoints every 4 steps, the rerun starts from step 28 and ends bit-identical
    to an uninterrupted run (with AuxK at work: at this width some latents are dead by then)."""
    cfg = replace(CFG, width=128, epochs=3)
    fit = fit_topk(acts, cfg, progress=Progress(False))
    ckpt = tmp_path / "state.pt"
    with pytest.raises(_Interrupt):
        fit_topk(acts, cfg, checkpoint=ckpt, run_id="r", checkpoint_every=4, progress=_StopAt(29))
    state = torch.load(ckpt, weights_only=False)
    assert state["step"] == 28 and int((state["since_fired"] >= cfg.dead_tokens).sum()) > 0
    resume = _StopAt(-1)
    again = fit_topk(acts, cfg, checkpoint=ckpt, run_id="r", checkpoint_every=4, progress=resume)
    assert resume.initial == 28
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(again, name), getattr(fit, name)), name
    assert again.loss_by_epoch == fit.loss_by_epoch and again.dead_fraction == fit.dead_fraction
    other = fit_topk(acts, cfg, checkpoint=ckpt, run_id="another run", progress=Progress(False))
    assert torch.equal(other.W_dec, fit.W_dec)  # a checkpoint of another run is not resumed from


def test_saved_then_loaded_sae_encodes_identically(subject, split, tmp_path):
    sae = train_topk_sae(subject, split[0][:40], LAYER, SITE, replace(CFG, epochs=1), batch_size=8,
                         progress=Progress(False))
    assert (sae.architecture, sae.layer, sae.site, sae.k) == ("topk", LAYER, SITE, CFG.k) and sae.apply_b_dec_to_input
    assert sae.model_name == subject.info.name and sae.prepend_bos is False
    save_sae(sae, tmp_path / "sae", dataset="docs", context_size=SEQ_LEN, training={"fvu": 0.25, **sae.meta})
    back = load_sae(str(tmp_path / "sae"))
    x = collect_activations(subject, split[1], LAYER, SITE, progress=Progress(False))
    assert torch.equal(back.encode(x), sae.encode(x))
    assert back.meta["fvu"] == 0.25 and back.meta["train_tokens"] == sae.meta["train_tokens"]
    assert (back.architecture, back.layer, back.site, back.k, back.model_name, back.prepend_bos) == (
        "topk", LAYER, SITE, CFG.k, subject.info.name, False)


def test_fvu_l0_dead_and_clean_loss_equal_an_independent_computation(subject, split, fit):
    sae = _sae_of(fit, subject)
    windows = split[1]
    q = evaluate_sae(subject, sae, windows, batch_size=5, progress=Progress(False))
    x = np.concatenate(_alone(subject, windows, LAYER, SITE))
    W_enc, b_enc, W_dec, b_dec = (getattr(sae, n).double().numpy() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    pre = (x - b_dec) @ W_enc + b_enc
    f = np.zeros_like(pre)
    top = np.argsort(-pre, axis=1, kind="stable")[:, : CFG.k]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, 1), 0), 1)
    x_hat = f @ W_dec + b_dec
    assert q.eval_tokens == len(x) and q.massive_left_out == 0
    np.testing.assert_allclose(q.fvu, ((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum(), rtol=1e-4)
    # a pre-activation near the TopK cut or near 0 may be decided otherwise by the batched float32 pass: each such
    # decision may move a token's count of active features by one, and a feature's deadness
    unsure = topk_ambiguous(pre, CFG.k)
    assert q.l0 == pytest.approx((f != 0).sum(1).mean(), abs=unsure.sum(1).mean())
    assert q.dead_fraction == pytest.approx((~(f != 0).any(0)).mean(), abs=unsure.any(0).mean())
    nll, n, reach = 0.0, 0, 0.0
    for w in windows:  # the loss of predicting token t+1 from token t
        ids = torch.tensor([w.token_ids])
        with torch.no_grad():
            logits = subject.model(input_ids=ids).logits[0].double()
        nll += float(F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
        n += len(w.token_ids) - 1
        # a token's loss (logsumexp - its logit) moves by at most twice its logits' float32 reach
        reach += float(2e-5 * logits[:-1].abs().max(-1).values.clamp(min=1.0).sum())
    assert q.loss_clean == pytest.approx(nll / n, rel=1e-5, abs=reach / n)


@pytest.mark.parametrize("site", ["resid_pre", "resid_post", "mlp_out", "attn_out"])
def test_an_exact_dictionary_splices_in_at_no_cost_and_the_hooks_go_away(subject, split, site):
    """The residual basis as a dictionary reconstructs exactly: FVU 0 and spliced loss = clean loss (so the hook
    puts back what it took out), zeroing changes it; afterwards a plain forward pass equals one before (no hook left),
    also when the hook fails mid-pass."""
    ids = torch.tensor([split[1][0].token_ids])
    before = subject.model(input_ids=ids).logits
    q = evaluate_sae(subject, baseline_dictionary("basis", subject.d_model, LAYER, site), split[1][:6], batch_size=4,
                     progress=Progress(False))
    assert q.fvu < 1e-10 and q.l0 > 0
    assert q.loss_spliced == pytest.approx(q.loss_clean, abs=1e-5) and abs(q.loss_zero - q.loss_clean) > 1e-3
    module, _ = subject.site_module(LAYER, site)

    def fail(_v):
        raise _Interrupt

    with pytest.raises(_Interrupt), replaced_site(subject, LAYER, site, torch.ones_like(ids, dtype=torch.bool), fail):
        subject.model(input_ids=ids)
    assert not module._forward_hooks and not module._forward_pre_hooks
    assert torch.equal(subject.model(input_ids=ids).logits, before)


def test_parser_defaults_are_the_job_defaults():
    from analysis.__main__ import build_parser
    from analysis.jobs.options import from_args
    from analysis.jobs.sae import SaeTrainJob

    args = build_parser().parse_args(["sae", "train", "--layer", "3", "--width", "96", "--k", "8", "--out", "x"])
    assert from_args(SaeTrainJob, args) == SaeTrainJob(layer=3, out="x", train=TrainConfig(width=96, k=8))
