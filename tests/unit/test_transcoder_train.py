"""The TopK transcoder trainer on tiny random models: a planted sparse transcoder put in place of an MLP is found
again, the paired activations are the MLP's normed input and its output, the quality numbers (FVU of the MLP output,
the loss with the transcoder's output in place of the MLP's, with and without its error term, and zeroed) against
hand computations with plain hooks, and the job through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis.corpus import load_corpus, make_windows
from analysis.models import load_model
from analysis.progress import Progress
from analysis.sae.model import MASSIVE, SAE, finish, topk_relu
from analysis.sae_eval import TranscoderQuality, evaluate_sae
from analysis.sae_train import TrainConfig, check_mlp_hookable, collect_pairs, fit_topk, used_positions
from analysis.types import UserError, Window
from tests.helpers import ATOL, RTOL

LAYER, SEQ_LEN = 1, 24
QUIET = Progress(False)


def _random_windows(subject, n: int, length: int = 32, seed: int = 0) -> list[Window]:
    """Windows of random token ids (the special tokens 0-2 left out): more varied MLP inputs than the tiny corpus."""
    rng = np.random.default_rng(seed)
    vocab = subject.model.config.vocab_size
    return [Window(i, i, 0, tuple(int(t) for t in rng.integers(3, vocab, length))) for i in range(n)]


def _transcoder(W_enc, b_enc, W_dec, b_dec, k: int, layer: int = LAYER) -> SAE:
    return finish(SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, architecture="topk", k=k, layer=layer,
                      site="mlp_input", output_site="mlp_out", apply_b_dec_to_input=False, name="tiny-transcoder"))


class _Planted(torch.nn.Module):
    """An MLP that is exactly a TopK transcoder of its input."""

    def __init__(self, W_enc, W_dec, b_dec, k):
        super().__init__()
        self.W_enc, self.W_dec, self.b_dec, self.k = W_enc, W_dec, b_dec, k

    def forward(self, x):
        return topk_relu(x @ self.W_enc, self.k) @ self.W_dec + self.b_dec


def test_a_planted_transcoder_is_recovered(tiny_folders):
    """Layer 1's MLP of a tiny llama replaced by a known TopK transcoder (64 features = 2 x d_model, k 4, encoder
    and decoder directions independent): trained on 12,800 pairs of it (width 128, 1,000 steps), every planted
    decoder row has a learned row at cosine >= 0.9 (here all of them, >= 0.96 over planted and training seeds), the
    held-out FVU of the MLP output is < 0.1 (~0.06), and the loss with the error term kept is the clean loss."""
    subject = load_model(str(tiny_folders["llama"]))
    d, n_planted, k = subject.d_model, 64, 4
    g = torch.Generator().manual_seed(7)
    W_dec = torch.randn(n_planted, d, generator=g)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_enc = torch.randn(d, n_planted, generator=g)
    W_enc /= W_enc.norm(dim=0, keepdim=True)
    b_dec = 0.1 * torch.randn(d, generator=g)
    subject.blocks()[LAYER].mlp = _Planted(W_enc, W_dec, b_dec, k)
    windows = _random_windows(subject, 500)
    x, y = collect_pairs(subject, windows[:400], LAYER, batch_size=32, progress=QUIET)
    assert x.shape == y.shape == (400 * 32, d)
    torch.testing.assert_close(y, topk_relu(x @ W_enc, k) @ W_dec + b_dec)  # the pairs are the planted map's
    fit = fit_topk(x, TrainConfig(width=128, k=k, epochs=20, batch_tokens=256, lr=2e-2, dead_tokens=2000, seed=0),
                   progress=QUIET, y=y)
    cos = (W_dec @ fit.W_dec.T).max(1).values
    assert float((cos >= 0.9).float().mean()) >= 0.9, cos
    q = evaluate_sae(subject, _transcoder(fit.W_enc, fit.b_enc, fit.W_dec, fit.b_dec, k), windows[400:],
                     batch_size=25, progress=QUIET)
    assert isinstance(q, TranscoderQuality) and q.eval_tokens == 100 * 32 and q.massive_left_out == 0
    assert q.fvu < 0.1 and q.l0 <= k
    assert q.loss_with_error == pytest.approx(q.loss_clean, abs=1e-5)


def test_fit_on_targets_is_deterministic_and_checks_its_pairs():
    """The same seed gives the same weights; a decoder wider than the encoder's input gets its own encoder init;
    targets that do not pair with the inputs are refused."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(600, 8, generator=g), torch.randn(600, 12, generator=g)
    cfg = TrainConfig(width=24, k=3, epochs=2, batch_tokens=128, lr=1e-2, dead_tokens=200, seed=1)
    a, b = fit_topk(x, cfg, progress=QUIET, y=y), fit_topk(x, cfg, progress=QUIET, y=y)
    assert a.W_enc.shape == (8, 24) and a.W_dec.shape == (24, 12) and a.b_dec.shape == (12,)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    with pytest.raises(ValueError, match="pair"):
        fit_topk(x, cfg, progress=QUIET, y=y[:-1])


@pytest.mark.parametrize("kind", ["llama", "gemma"])
def test_pairs_are_the_mlp_input_after_its_norm_and_the_mlp_output(tiny_folders, sae_train_corpus, kind):
    """Batched with padding, the pairs equal each window run alone with plain hooks: the pre-MLP norm's output
    (llama: post_attention_layernorm; Gemma: pre_feedforward_layernorm) and the MLP's output (Gemma: after
    post_feedforward_layernorm), every real token kept."""
    subject = load_model(str(tiny_folders[kind]))
    block = subject.blocks()[LAYER]
    norm_in = block.pre_feedforward_layernorm if kind == "gemma" else block.post_attention_layernorm
    out = block.post_feedforward_layernorm if kind == "gemma" else block.mlp
    windows = list(make_windows(load_corpus(str(sae_train_corpus)).documents, subject.tokenizer, SEQ_LEN))[:7]
    windows[3] = Window(3, 3, 0, windows[3].token_ids[:9])  # a short one: padding in its batch
    x, y = collect_pairs(subject, windows, LAYER, batch_size=3, progress=QUIET)
    seen: dict[str, torch.Tensor] = {}
    handles = [norm_in.register_forward_hook(lambda _m, _a, o: seen.__setitem__("x", o)),
               out.register_forward_hook(lambda _m, _a, o: seen.__setitem__("y", o))]
    xs, ys = [], []
    try:
        for w in windows:
            with torch.no_grad():
                subject.model(input_ids=torch.tensor([w.token_ids]))
            xs.append(seen["x"][0])
            ys.append(seen["y"][0])
    finally:
        for h in handles:
            h.remove()
    assert x.shape[0] == sum(len(w.token_ids) for w in windows)
    torch.testing.assert_close(x, torch.cat(xs), rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(y, torch.cat(ys), rtol=RTOL, atol=ATOL)


def test_losses_and_fvu_equal_a_hand_computation(tiny_folders, sae_train_corpus):
    """A random transcoder on one batch of three windows: the loss with its error term kept is the clean loss; the
    loss with the MLP output replaced by its output alone, and zeroed, the FVU and the loss recovered equal the
    same computed with a plain forward hook on the MLP, each window alone."""
    subject = load_model(str(tiny_folders["llama"]))
    d = subject.d_model
    g = torch.Generator().manual_seed(3)
    tc = _transcoder(torch.randn(d, 96, generator=g) / d ** 0.5, 0.1 * torch.randn(96, generator=g),
                     torch.randn(96, d, generator=g) * 0.3, 0.1 * torch.randn(d, generator=g), k=6)
    windows = list(make_windows(load_corpus(str(sae_train_corpus)).documents, subject.tokenizer, SEQ_LEN))[:3]
    windows[1] = Window(1, 1, 0, windows[1].token_ids[:11])
    q = evaluate_sae(subject, tc, windows, batch_size=3, progress=QUIET)
    assert isinstance(q, TranscoderQuality) and q.massive_left_out == 0
    assert q.loss_with_error == pytest.approx(q.loss_clean, abs=1e-5)
    mlp = subject.blocks()[LAYER].mlp
    nll = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    pairs: list[tuple[torch.Tensor, torch.Tensor]] = []
    n_pred = 0
    for w in windows:
        ids = torch.tensor([w.token_ids])
        for name, replace in (("clean", None), ("spliced", lambda x: tc.reconstruct(x)),
                              ("zero", lambda x: torch.zeros(x.shape[:-1] + (d,)))):
            def hook(_m, args, out, replace=replace):
                if name == "clean":
                    pairs.append((args[0][0].double(), out[0].double()))
                    return None
                return replace(args[0])

            handle = mlp.register_forward_hook(hook)
            try:
                with torch.no_grad():
                    logits = subject.model(input_ids=ids).logits[0].double()
            finally:
                handle.remove()
            nll[name] += float(F.cross_entropy(logits[:-1], ids[0, 1:], reduction="sum"))
        n_pred += len(w.token_ids) - 1
    loss = {name: v / n_pred for name, v in nll.items()}
    for name in nll:
        assert getattr(q, f"loss_{name}") == pytest.approx(loss[name], rel=1e-5), name
    assert q.loss_recovered == pytest.approx((loss["zero"] - loss["spliced"]) / (loss["zero"] - loss["clean"]),
                                             rel=1e-4)
    x = torch.cat([p[0] for p in pairs])
    y = torch.cat([p[1] for p in pairs])
    W_enc, b_enc, W_dec, b_dec = (getattr(tc, n).double() for n in ("W_enc", "b_enc", "W_dec", "b_dec"))
    y_hat = topk_relu(x @ W_enc + b_enc, tc.k) @ W_dec + b_dec
    assert q.fvu == pytest.approx(float(((y - y_hat) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()), rel=1e-4)
    assert q.eval_tokens == len(x) and q.l0 <= tc.k


def test_positions_massive_at_the_input_or_the_output_are_left_out(tiny_folders):
    """A transcoder's positions are typical at both sites: a massive MLP output (as early layers write) counts."""
    subject = load_model(str(tiny_folders["llama"]))
    enc = subject.encode([[5, 6, 7, 8], [9, 10, 11, 12]])
    x, y = torch.ones(2, 4, 3), torch.ones(2, 4, 3)
    x[0, 1] *= 1.01 * MASSIVE
    y[1, 2] *= 1.01 * MASSIVE
    assert used_positions(x, enc).tolist() == [[True, False, True, True], [True] * 4]
    assert used_positions(x, enc, y).tolist() == [[True, False, True, True], [True, True, False, True]]


def test_a_model_without_a_hookable_mlp_is_refused(tiny_folders):
    subject = load_model(str(tiny_folders["llama"]))
    check_mlp_hookable(subject, LAYER)
    del subject.blocks()[LAYER].mlp
    with pytest.raises(UserError, match="cannot hook the MLP"):
        check_mlp_hookable(subject, LAYER)


def test_job_settings_tell_a_transcoder_from_an_sae():
    """A transcoder's settings say its kind and have no site; an SAE's are those of before transcoders (no kind),
    so SAE folders trained then stay trained."""
    from analysis.__main__ import build_parser
    from analysis.jobs.options import from_args
    from analysis.jobs.sae import SaeTrainJob

    cfg = TrainConfig(width=96, k=8)
    sae = SaeTrainJob(layer=3, out="x", train=cfg).settings()
    tc = SaeTrainJob(layer=3, out="x", train=cfg, kind="transcoder").settings()
    assert "kind" not in sae and sae["site"] == "resid_post"
    assert tc["kind"] == "transcoder" and "site" not in tc and tc != sae
    assert tc == SaeTrainJob(layer=3, out="x", train=cfg, kind="transcoder", site="mlp_out").settings()
    args = build_parser().parse_args(["sae", "train", "--kind", "transcoder", "--layer", "3", "--width", "96", "--k",
                                      "8", "--out", "x"])
    assert from_args(SaeTrainJob, args) == SaeTrainJob(layer=3, out="x", train=cfg, kind="transcoder")


def test_cli_trains_a_transcoder_finds_it_done_and_refuses_an_unknown_kind(tiny_folders, sae_train_corpus, tmp_path,
                                                                           capsys):
    from analysis.__main__ import main
    from analysis.sae.load import load_sae

    out = tmp_path / "tc"
    argv = ["sae", "train", "--kind", "transcoder", "--model", str(tiny_folders["llama"]), "--layer", str(LAYER),
            "--width", "64", "--k", "4", "--tokens", "1500", "--eval-tokens", "300", "--corpus", str(sae_train_corpus),
            "--seq-len", str(SEQ_LEN), "--epochs", "2", "--batch-tokens", "256", "--checkpoint-every", "2", "--out",
            str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "FVU of the MLP output" in printed and "error term" in printed and "loss recovered" in printed
    tc = load_sae(str(out))
    assert tc.is_transcoder and (tc.site, tc.output_site, tc.layer, tc.k) == ("mlp_input", "mlp_out", LAYER, 4)
    assert not tc.apply_b_dec_to_input and not (out / ".train_state.pt").exists()
    assert tc.meta["settings"]["kind"] == "transcoder" and 0 < tc.meta["fvu"] < 1
    assert tc.meta["loss_with_error"] == pytest.approx(tc.meta["loss_clean"], abs=1e-5)
    assert json.loads((out / "cfg.json").read_text())["metadata"]["hook_name_out"].endswith("hook_mlp_out")
    mtime = (out / "sae_weights.safetensors").stat().st_mtime_ns
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "nothing to do" in captured.err and "FVU of the MLP output" in captured.out
    assert (out / "sae_weights.safetensors").stat().st_mtime_ns == mtime
    other = tmp_path / "foo"
    assert main([*argv[:3], "foo", *argv[4:-2], str(other), "--quiet"]) == 2
    assert "--kind 'foo'" in capsys.readouterr().err and not other.exists()
