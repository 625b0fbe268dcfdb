"""Train a TopK sparse autoencoder on one site of a subject model, or a TopK transcoder of one layer's MLP
(``analysis/sae_eval.py`` measures either on held-out text).

The recipe is Gao et al. 2024 ("Scaling and evaluating sparse autoencoders") at its smallest:

    pre = (x - b_dec) @ W_enc + b_enc       W_enc [d_in, d_sae], initialised as W_dec.T
    f = relu of the k largest pre, else 0
    x_hat = f @ W_dec + b_dec               W_dec [d_sae, d_in] with unit-norm rows; b_dec starts at mean(x)
    loss = |x - x_hat|^2 / V + aux_coef * AuxK

``V`` is the mean ``|x - mean(x)|^2`` of the training activations, so the loss is a fraction of variance
unexplained. AuxK revives dead latents: the ``aux_k`` largest pre-activations among the latents that have not
fired in the last ``dead_tokens`` training tokens reconstruct the residual ``x - x_hat`` (detached), scored by
their MSE over the residual's variance. Adam (eps 6.25e-10 as in the paper); before each step the decoder's
gradient loses its component along each row, after it the rows are renormalised. The learning rate decays
linearly to 0 over the last 20% of the steps.

A transcoder (Dunefsky et al. 2024) is the same recipe with a target ``y`` other than its input ``x``: it reads the
MLP's normed input (``mlp_input``) and predicts the MLP's output (``mlp_out``, after Gemma's post-FF norm) at the
same token. ``pre = x @ W_enc + b_enc`` (no ``b_dec`` in the input space), ``y_hat = f @ W_dec + b_dec`` with
``b_dec`` starting at mean(y), ``V`` and AuxK's residual are those of ``y``; ``W_enc`` starts as ``W_dec.T`` as
above (its own seeded unit columns where ``d_in != d_out``).

Activations: the site's vectors at the real tokens of corpus windows (the BOS column and padding skipped), except
massive activations (Sun et al. 2024): vectors longer than ``MASSIVE`` times the batch's median. These are the
attention sinks -- at layer 15 of SmolLM2 (no BOS) the first token of every window, ~24,000 in norm against a
median of ~172, and 0.03% of the later tokens -- which would otherwise hold nearly all the variance (the later
ones alone 89% of it): the loss and the FVU would measure them, not the text. ``sae_eval`` uses the same
positions; a transcoder's positions are those where both its input and its output are typical (early MLPs
write the massive activations). The activations are held in memory in float32 (tokens x d_in x 4 bytes: 230 MB for
100k tokens of a 576-wide site; twice that for a transcoder's pairs) and shuffled each epoch by a permutation that
depends on (seed, epoch) alone. A run is deterministic on CPU for a fixed seed, and resumable: every
``checkpoint_every`` steps the weights, the Adam state, the step, the dead-latent counters and the loss sums are
saved atomically; a resumed run collects the same activations again and ends with the same weights as a run that
never stopped.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from analysis.activations import site_activations
from analysis.models import Encoded, SubjectModel
from analysis.progress import Progress
from analysis.sae.model import SAE, TRANSCODER_SITES, typical_positions
from analysis.types import UserError, Window

ADAM_EPS = 6.25e-10
DECAY_FRACTION = 0.2
"""The learning rate falls linearly to 0 over this last fraction of the steps."""


@dataclass(frozen=True)
class TrainConfig:
    """What determines a TopK SAE's weights, given its activations (stored in ``cfg.json``'s ``training``)."""

    width: int
    """d_sae: the number of features."""
    k: int
    """Active features per token."""
    epochs: int = 5
    """Passes over the collected activations."""
    batch_tokens: int = 1024
    """Tokens per Adam step."""
    lr: float | None = None
    """Adam's learning rate; None: 1.1e-3 / sqrt(width / 2^14) -- the paper's law of the best rate against width
    (2e-4 / sqrt(width / 2^14)), 5.5 times higher for short runs (1e5-1e6 tokens in batches of 1,024; the paper's
    runs are 1e9+ tokens in batches of 131k). At width 4,608 that is 2e-3: after 4 epochs over 100k tokens of
    SmolLM2 (layer 15, k 32) it leaves a held-out FVU of 0.22, the paper's rate 0.31 (3e-3: 0.21, with more
    features that rarely fire)."""
    aux_k: int | None = None
    """Dead latents in the AuxK loss; None: d_in / 2 (the paper's choice)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss."""
    dead_tokens: int = 100_000
    """A latent is dead once it has not fired in this many training tokens (the paper: 10M in runs of billions;
    here 1/5 of a 5-epoch run over 100k tokens, and still ~700 firings of an average latent at k/width = 1/144)."""
    seed: int = 0
    """Seeds the decoder's initial directions and each epoch's shuffle (and, in the job, the windows)."""

    def __post_init__(self):
        if not 0 < self.k <= self.width:
            raise ValueError(f"need 0 < k <= width, got k={self.k}, width={self.width}")
        if min(self.epochs, self.batch_tokens, self.dead_tokens) < 1:
            raise ValueError("epochs, batch_tokens and dead_tokens must be at least 1")

    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else 1.1e-3 / math.sqrt(self.width / 2 ** 14)


@dataclass
class Fit:
    """A trained TopK dictionary (SAE or transcoder; float32, CPU) and how its training went."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    steps: int
    n_tokens: int
    """Training tokens (each seen once per epoch)."""
    loss_by_epoch: list[float]
    """Mean training loss of each epoch without AuxK: the training fraction of variance unexplained (of the
    target, for a transcoder)."""
    dead_fraction: float
    """Latents that had not fired in the last ``dead_tokens`` training tokens when training ended."""


# ---- activations -----------------------------------------------------------------------------------------

def _batches(subject: SubjectModel, windows: list[Window], batch_size: int) -> Iterator[Encoded]:
    for b in range(0, len(windows), batch_size):
        yield subject.encode([list(w.token_ids) for w in windows[b : b + batch_size]])


def used_positions(acts: torch.Tensor, enc: Encoded, *more: torch.Tensor) -> torch.Tensor:
    """``[B, P]`` bool: the positions of a batch an SAE is trained and measured on -- real tokens (not the BOS
    column, not padding) that are not massive activations (``analysis.sae.model.typical_positions``); with ``more``
    sites' vectors (a transcoder's output), those typical in every one of them."""
    real = enc.attention_mask.bool().to(acts.device)
    real[:, : enc.n_prefix] = False
    used = typical_positions(acts, real)
    for other in more:
        used = used & typical_positions(other, real)
    return used


def collect_sites(subject: SubjectModel, windows: list[Window], layer: int, sites: tuple[str, ...],
                  batch_size: int = 16, progress: Progress = Progress()) -> list[torch.Tensor]:
    """``[n, width]`` float32 (CPU) vectors of each of ``sites`` at the same positions of ``windows``, in window
    order: one forward pass per batch (up to the last site), at the positions typical in every site
    (``used_positions``)."""
    chunks: list[list[torch.Tensor]] = [[] for _ in sites]
    total = sum(len(w.token_ids) for w in windows)
    bar = progress.bar(total, f"activations L{layer} {' '.join(sites)}", unit="tok", unit_scale=True)
    try:
        for enc in _batches(subject, windows, batch_size):
            acts = site_activations(subject, enc.input_ids, enc.attention_mask, [(layer, s) for s in sites])
            vectors = [acts[(layer, s)] for s in sites]
            used = used_positions(vectors[0], enc, *vectors[1:])
            for chunk, v in zip(chunks, vectors):
                chunk.append(v[used].float().cpu())
            bar.update(int(enc.real.sum()))
    finally:
        bar.close()
    return [torch.cat(c) if c else torch.empty(0, subject.site_width(s)) for c, s in zip(chunks, sites)]


def collect_activations(subject: SubjectModel, windows: list[Window], layer: int, site: str, batch_size: int = 16,
                        progress: Progress = Progress()) -> torch.Tensor:
    """``[n, width]`` float32 (CPU) vectors of ``site`` at the used positions of ``windows`` (``used_positions``),
    in window order."""
    return collect_sites(subject, windows, layer, (site,), batch_size, progress)[0]


def collect_pairs(subject: SubjectModel, windows: list[Window], layer: int, batch_size: int = 16,
                  progress: Progress = Progress()) -> tuple[torch.Tensor, torch.Tensor]:
    """A transcoder's training pairs: the MLP's normed input ``x`` and its output ``y`` (``[n, d_model]`` each,
    float32, CPU) at the same tokens, where both are typical (``collect_sites``)."""
    check_mlp_hookable(subject, layer)
    x, y = collect_sites(subject, windows, layer, TRANSCODER_SITES, batch_size, progress)
    return x, y


def check_mlp_hookable(subject: SubjectModel, layer: int) -> None:
    """UserError unless ``layer`` has an MLP module whose input and output we can hook (a transcoder's sites)."""
    subject.check_layer(layer)
    for site in TRANSCODER_SITES:
        try:
            subject.site_module(layer, site)
        except (AttributeError, RuntimeError) as exc:
            raise UserError(f"cannot hook the MLP of {subject.info.name} layer {layer} ({site}: {exc}): no "
                            "transcoder can be trained on it") from None


# ---- training --------------------------------------------------------------------------------------------

def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([seed, 1, epoch]).permutation(n))


def _moments(acts: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, float]:
    """The mean ``[d_in]`` (float64) of the rows and their mean squared distance to it, in chunks (no float64
    copy of the whole buffer)."""
    mean = acts.sum(0, dtype=torch.float64) / acts.shape[0]
    sq = sum(float((acts[i : i + chunk].double() - mean).pow(2).sum()) for i in range(0, acts.shape[0], chunk))
    return mean, sq / acts.shape[0]


def _initial_weights(d_in: int, mean: torch.Tensor, cfg: TrainConfig,
                     inputs: tuple[torch.Tensor, float, float] | None = None) -> dict[str, torch.Tensor]:
    """Unit-norm random decoder rows, the encoder their transpose (its own unit columns when the input is not the
    output space's width), ``b_dec`` the target's mean. A transcoder's (``inputs``: the input's mean, its mean
    squared distance to it, the target's) has its encoder scaled by the target's spread over the input's and
    centred on the input's mean: pre-activations start on the target's scale and around 0 for every feature. The
    plain transpose leaves two thirds of a 4,608-wide transcoder of SmolLM2's layer 15 dead (its MLP's normed input
    is ~10x shorter than its output; measured: 67.8 % dead, FVU 0.497, loss recovered 76.6 %; this start: 0.7 %,
    0.524, 73.8 %)."""
    rng = np.random.default_rng([cfg.seed, 0])
    W_dec = torch.from_numpy(rng.standard_normal((cfg.width, mean.shape[0]), dtype=np.float32)).to(mean.device)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    if d_in == mean.shape[0]:
        W_enc = W_dec.T.contiguous()
    else:
        W_enc = torch.from_numpy(np.random.default_rng([cfg.seed, 2]).standard_normal((d_in, cfg.width),
                                                                                     dtype=np.float32))
        W_enc = (W_enc / W_enc.norm(dim=0, keepdim=True)).to(mean.device)
    b_enc = torch.zeros_like(W_dec[:, 0])
    if inputs is not None:
        x_mean, x_var, y_var = inputs
        W_enc = W_enc * math.sqrt(y_var / max(x_var, 1e-12))
        b_enc = -(x_mean.float() @ W_enc)
    return {"W_enc": W_enc, "b_enc": b_enc, "W_dec": W_dec, "b_dec": mean.float()}


def _save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint


def _load_state(path: Path | None, run_id: str, device: torch.device) -> dict | None:
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location=device, weights_only=True)
    return state if state.get("run_id") == run_id else None


def fit_topk(acts: torch.Tensor, cfg: TrainConfig, checkpoint: Path | None = None, run_id: str = "",
             checkpoint_every: int = 50, progress: Progress = Progress(), y: torch.Tensor | None = None) -> Fit:
    """Train a TopK SAE on ``acts`` ``[n, d_in]`` -- or, given targets ``y`` ``[n, d_out]`` (the same rows), a TopK
    transcoder from ``acts`` to ``y`` -- on the device they lie on (see module doc). With ``checkpoint``, the state
    is saved there every ``checkpoint_every`` steps and a checkpoint of the same ``run_id`` is resumed from (the
    file is left for the caller to delete)."""
    n, d_in = acts.shape
    if n == 0:
        raise UserError("no activations to train on")
    if y is not None and (y.shape[0] != n or y.device != acts.device):
        raise ValueError(f"targets {tuple(y.shape)} on {y.device} do not pair with inputs {tuple(acts.shape)} on "
                         f"{acts.device}")
    targets = acts if y is None else y
    steps_per_epoch = math.ceil(n / cfg.batch_tokens)
    total = steps_per_epoch * cfg.epochs
    aux_k = cfg.aux_k if cfg.aux_k is not None else targets.shape[1] // 2
    lr = cfg.learning_rate()
    mean, variance = _moments(targets)
    state = _load_state(checkpoint, run_id, acts.device)
    inputs = None if y is None or state else (*_moments(acts), variance)
    params = {name: t.clone().requires_grad_() for name, t in
              (state["params"] if state else _initial_weights(d_in, mean, cfg, inputs)).items()}
    W_enc, b_enc, W_dec, b_dec = (params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    opt = torch.optim.Adam(list(params.values()), lr=lr, eps=ADAM_EPS)
    if state:
        opt.load_state_dict(state["optimizer"])
    start = state["step"] if state else 0
    since_fired = state["since_fired"] if state else torch.zeros(cfg.width, dtype=torch.int64, device=acts.device)
    loss_by_epoch = list(state["loss_by_epoch"]) if state else []
    loss_sum = state["loss_sum"] if state else 0.0
    order, order_epoch = None, -1
    what = "SAE" if y is None else "transcoder"
    bar = progress.bar(total, f"train TopK {what} {cfg.width} k={cfg.k}", unit="step", initial=start)
    try:
        for step in range(start, total):
            epoch, j = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(n, cfg.seed, epoch).to(acts.device), epoch
            rows = order[j * cfg.batch_tokens : (j + 1) * cfg.batch_tokens]
            x = acts[rows]
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (total - step) / (DECAY_FRACTION * total))
            pre = (x - b_dec) @ W_enc + b_enc if y is None else x @ W_enc + b_enc
            vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
            x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=vals.relu(), mode="sum") + b_dec
            residual = (x if y is None else y[rows]) - x_hat
            mse = residual.pow(2).sum(1).mean() / variance
            loss = mse
            dead = since_fired >= cfg.dead_tokens
            n_dead = int(dead.sum())
            if n_dead and aux_k:
                aux_vals, aux_idx = pre.masked_fill(~dead, -math.inf).topk(min(aux_k, n_dead), dim=-1, sorted=False)
                e_hat = F.embedding_bag(aux_idx, W_dec, per_sample_weights=aux_vals.relu(), mode="sum")
                target = residual.detach()
                aux = (e_hat - target).pow(2).sum() / (target - target.mean(0)).pow(2).sum()
                loss = loss + cfg.aux_coef * aux.nan_to_num(0.0)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            with torch.no_grad():
                W_dec.grad -= (W_dec.grad * W_dec).sum(1, keepdim=True) * W_dec
                opt.step()
                W_dec /= W_dec.norm(dim=1, keepdim=True)
                since_fired += x.shape[0]
                since_fired[idx[vals > 0]] = 0
            loss_sum += float(mse.detach()) * x.shape[0]
            if j == steps_per_epoch - 1:
                loss_by_epoch.append(loss_sum / n)
                loss_sum = 0.0
            if checkpoint is not None and (step + 1) % checkpoint_every == 0 and step + 1 < total:
                _save_state(checkpoint, {
                    "run_id": run_id, "step": step + 1, "optimizer": opt.state_dict(),
                    "params": {k: v.detach().clone() for k, v in params.items()},
                    "since_fired": since_fired.clone(), "loss_by_epoch": loss_by_epoch, "loss_sum": loss_sum})
            bar.set_postfix(fvu=f"{float(mse.detach()):.3f}", dead=n_dead, refresh=False)
            bar.update(1)
    finally:
        bar.close()
    w = {k: v.detach().cpu() for k, v in params.items()}
    return Fit(W_enc=w["W_enc"], b_enc=w["b_enc"], W_dec=w["W_dec"], b_dec=w["b_dec"], steps=total, n_tokens=n,
               loss_by_epoch=loss_by_epoch, dead_fraction=float((since_fired >= cfg.dead_tokens).float().mean()))


def _dictionary(subject: SubjectModel, windows: list[Window], fit: Fit, layer: int, k: int, **where) -> SAE:
    left_out = sum(len(w.token_ids) for w in windows) - fit.n_tokens
    return SAE(W_enc=fit.W_enc, b_enc=fit.b_enc, W_dec=fit.W_dec, b_dec=fit.b_dec, architecture="topk", k=k,
               layer=layer, model_name=subject.info.name, prepend_bos=subject.info.prepend_bos, **where,
               meta={"train_tokens": fit.n_tokens, "train_massive_left_out": left_out, "steps": fit.steps,
                     "train_fvu_by_epoch": fit.loss_by_epoch, "train_dead_fraction": fit.dead_fraction})


def train_topk_sae(subject: SubjectModel, windows: list[Window], layer: int, site: str, cfg: TrainConfig,
                   batch_size: int = 16, checkpoint: Path | None = None, run_id: str = "",
                   checkpoint_every: int = 50, progress: Progress = Progress()) -> SAE:
    """A TopK SAE of ``site`` at ``layer`` trained on the activations of ``windows`` (``fit_topk``, on the model's
    device); ``meta`` holds how training went. Its ``digest`` is set when it is saved and loaded back
    (``load_sae``)."""
    subject.check_layer(layer)
    acts = collect_activations(subject, windows, layer, site, batch_size, progress).to(subject.device)
    fit = fit_topk(acts, cfg, checkpoint, run_id, checkpoint_every, progress)
    return _dictionary(subject, windows, fit, layer, cfg.k, site=site, apply_b_dec_to_input=True)


def train_topk_transcoder(subject: SubjectModel, windows: list[Window], layer: int, cfg: TrainConfig,
                          batch_size: int = 16, checkpoint: Path | None = None, run_id: str = "",
                          checkpoint_every: int = 50, progress: Progress = Progress()) -> SAE:
    """A TopK transcoder of the MLP of ``layer`` (``mlp_input`` -> ``mlp_out``) trained on the pairs of
    ``windows`` (``collect_pairs``, ``fit_topk`` with targets, on the model's device); as ``train_topk_sae``."""
    x, y = collect_pairs(subject, windows, layer, batch_size, progress)
    x, y = x.to(subject.device), y.to(subject.device)
    fit = fit_topk(x, cfg, checkpoint, run_id, checkpoint_every, progress, y=y)
    del x, y
    return _dictionary(subject, windows, fit, layer, cfg.k, site=TRANSCODER_SITES[0],
                       output_site=TRANSCODER_SITES[1], apply_b_dec_to_input=False)
