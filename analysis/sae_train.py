"""Train a TopK sparse autoencoder on one site of a subject model; measure any SAE's quality on held-out text.

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

Activations: the site's vectors at the real tokens of corpus windows (the BOS column and padding skipped), except
massive activations (Sun et al. 2024): vectors longer than ``MASSIVE`` times the batch's median. These are the
attention sinks -- at layer 15 of SmolLM2 (no BOS) the first token of every window, ~24,000 in norm against a
median of ~172, and 0.03% of the later tokens -- which would otherwise hold nearly all the variance (the later
ones alone 89% of it): the loss and the FVU would measure them, not the text. ``evaluate_sae`` uses the same
positions. The activations are held in memory in float32 (tokens x d_in x 4 bytes: 230 MB for 100k tokens of a
576-wide site) and shuffled each epoch by a permutation that depends on (seed, epoch) alone. A run is
deterministic on CPU for a fixed seed, and resumable: every ``checkpoint_every`` steps the weights, the Adam
state, the step, the dead-latent counters and the loss sums are saved atomically; a resumed run collects the
same activations again and ends with the same weights as a run that never stopped.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from analysis.activations import edited_site, site_activations, site_hooks
from analysis.models import Encoded, SubjectModel
from analysis.progress import Progress
from analysis.sae.model import SAE, check_fits, typical_positions
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
    """A trained TopK dictionary (float32, CPU) and how its training went."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    steps: int
    n_tokens: int
    """Training tokens (each seen once per epoch)."""
    loss_by_epoch: list[float]
    """Mean training loss of each epoch without AuxK: the training fraction of variance unexplained."""
    dead_fraction: float
    """Latents that had not fired in the last ``dead_tokens`` training tokens when training ended."""


# ---- activations -----------------------------------------------------------------------------------------

def _batches(subject: SubjectModel, windows: list[Window], batch_size: int) -> Iterator[Encoded]:
    for b in range(0, len(windows), batch_size):
        yield subject.encode([list(w.token_ids) for w in windows[b : b + batch_size]])


def used_positions(acts: torch.Tensor, enc: Encoded) -> torch.Tensor:
    """``[B, P]`` bool: the positions of a batch an SAE is trained and measured on -- real tokens (not the BOS
    column, not padding) that are not massive activations (``analysis.sae.model.typical_positions``)."""
    real = enc.attention_mask.bool().to(acts.device)
    real[:, : enc.n_prefix] = False
    return typical_positions(acts, real)


def collect_activations(subject: SubjectModel, windows: list[Window], layer: int, site: str, batch_size: int = 16,
                        progress: Progress = Progress()) -> torch.Tensor:
    """``[n, width]`` float32 (CPU) vectors of ``site`` at the used positions of ``windows`` (``used_positions``),
    in window order."""
    chunks = []
    total = sum(len(w.token_ids) for w in windows)
    bar = progress.bar(total, f"activations L{layer} {site}", unit="tok", unit_scale=True)
    try:
        for enc in _batches(subject, windows, batch_size):
            acts = site_activations(subject, enc.input_ids, enc.attention_mask, [(layer, site)])[(layer, site)]
            chunks.append(acts[used_positions(acts, enc)].float().cpu())
            bar.update(int(enc.real.sum()))
    finally:
        bar.close()
    return torch.cat(chunks) if chunks else torch.empty(0, subject.site_width(site))


# ---- training --------------------------------------------------------------------------------------------

def _epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng([seed, 1, epoch]).permutation(n))


def _moments(acts: torch.Tensor, chunk: int = 16384) -> tuple[torch.Tensor, float]:
    """The mean ``[d_in]`` (float64) of the rows and their mean squared distance to it, in chunks (no float64
    copy of the whole buffer)."""
    mean = acts.sum(0, dtype=torch.float64) / acts.shape[0]
    sq = sum(float((acts[i : i + chunk].double() - mean).pow(2).sum()) for i in range(0, acts.shape[0], chunk))
    return mean, sq / acts.shape[0]


def _initial_weights(d_in: int, mean: torch.Tensor, cfg: TrainConfig) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng([cfg.seed, 0])
    W_dec = torch.from_numpy(rng.standard_normal((cfg.width, d_in), dtype=np.float32)).to(mean.device)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    return {"W_enc": W_dec.T.contiguous(), "b_enc": torch.zeros_like(W_dec[:, 0]), "W_dec": W_dec,
            "b_dec": mean.float()}


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
             checkpoint_every: int = 50, progress: Progress = Progress()) -> Fit:
    """Train a TopK SAE on ``acts`` ``[n, d_in]``, on the device they lie on (see module doc). With
    ``checkpoint``, the state is saved there every ``checkpoint_every`` steps and a checkpoint of the same
    ``run_id`` is resumed from (the file is left for the caller to delete)."""
    n, d_in = acts.shape
    if n == 0:
        raise UserError("no activations to train on")
    steps_per_epoch = math.ceil(n / cfg.batch_tokens)
    total = steps_per_epoch * cfg.epochs
    aux_k = cfg.aux_k if cfg.aux_k is not None else d_in // 2
    lr = cfg.learning_rate()
    mean, variance = _moments(acts)
    state = _load_state(checkpoint, run_id, acts.device)
    params = {name: t.clone().requires_grad_() for name, t in
              (state["params"] if state else _initial_weights(d_in, mean, cfg)).items()}
    W_enc, b_enc, W_dec, b_dec = (params[k] for k in ("W_enc", "b_enc", "W_dec", "b_dec"))
    opt = torch.optim.Adam(list(params.values()), lr=lr, eps=ADAM_EPS)
    if state:
        opt.load_state_dict(state["optimizer"])
    start = state["step"] if state else 0
    since_fired = state["since_fired"] if state else torch.zeros(cfg.width, dtype=torch.int64, device=acts.device)
    loss_by_epoch = list(state["loss_by_epoch"]) if state else []
    loss_sum = state["loss_sum"] if state else 0.0
    order, order_epoch = None, -1
    bar = progress.bar(total, f"train TopK SAE {cfg.width} k={cfg.k}", unit="step", initial=start)
    try:
        for step in range(start, total):
            epoch, j = divmod(step, steps_per_epoch)
            if epoch != order_epoch:
                order, order_epoch = _epoch_order(n, cfg.seed, epoch).to(acts.device), epoch
            x = acts[order[j * cfg.batch_tokens : (j + 1) * cfg.batch_tokens]]
            for group in opt.param_groups:
                group["lr"] = lr * min(1.0, (total - step) / (DECAY_FRACTION * total))
            pre = (x - b_dec) @ W_enc + b_enc
            vals, idx = pre.topk(cfg.k, dim=-1, sorted=False)
            x_hat = F.embedding_bag(idx, W_dec, per_sample_weights=vals.relu(), mode="sum") + b_dec
            residual = x - x_hat
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


def train_topk_sae(subject: SubjectModel, windows: list[Window], layer: int, site: str, cfg: TrainConfig,
                   batch_size: int = 16, checkpoint: Path | None = None, run_id: str = "",
                   checkpoint_every: int = 50, progress: Progress = Progress()) -> SAE:
    """A TopK SAE of ``site`` at ``layer`` trained on the activations of ``windows`` (``fit_topk``, on the model's
    device); ``meta`` holds how training went. Its ``digest`` is set when it is saved and loaded back
    (``load_sae``)."""
    subject.check_layer(layer)
    acts = collect_activations(subject, windows, layer, site, batch_size, progress).to(subject.device)
    left_out = sum(len(w.token_ids) for w in windows) - acts.shape[0]
    fit = fit_topk(acts, cfg, checkpoint, run_id, checkpoint_every, progress)
    return SAE(W_enc=fit.W_enc, b_enc=fit.b_enc, W_dec=fit.W_dec, b_dec=fit.b_dec, architecture="topk", k=cfg.k,
               layer=layer, site=site, apply_b_dec_to_input=True, model_name=subject.info.name,
               prepend_bos=subject.info.prepend_bos,
               meta={"train_tokens": fit.n_tokens, "train_massive_left_out": left_out, "steps": fit.steps,
                     "train_fvu_by_epoch": fit.loss_by_epoch, "train_dead_fraction": fit.dead_fraction})


# ---- quality ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SAEQuality:
    """How well an SAE stands in for its site on held-out windows, at their used positions (``used_positions``)."""

    eval_tokens: int
    """The tokens measured on."""
    massive_left_out: int
    """Real tokens left out as massive activations."""
    fvu: float
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the tokens."""
    l0: float
    """Mean number of active features per token."""
    dead_fraction: float
    """Features that never fire on these tokens (rare ones too: a few thousand tokens hold ~1e5 firings)."""
    loss_clean: float
    """Next-token cross-entropy (nats) of the model as it is ..."""
    loss_spliced: float
    """... with the site replaced by the SAE's reconstruction ..."""
    loss_zero: float
    """... and with the site zeroed (at the used positions; the loss is that of the predictions made there)."""

    @property
    def loss_recovered(self) -> float:
        """(zero - spliced) / (zero - clean): 1 when splicing costs nothing, 0 when it is as bad as zeroing."""
        gap = self.loss_zero - self.loss_clean
        return (self.loss_zero - self.loss_spliced) / gap if gap else math.nan

    def to_json(self) -> dict:
        return {**asdict(self), "loss_recovered": self.loss_recovered}


def replaced_site(subject: SubjectModel, layer: int, site: str, where: torch.Tensor,
                  fn: Callable[[torch.Tensor], torch.Tensor]):
    """Inside the ``with`` block, forward passes see the site's vectors at positions ``where`` (``[B, P]`` bool)
    replaced by ``fn`` of them (``[n, width]`` -> ``[n, width]``). The hook is always removed."""
    def swap(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[where] = fn(h[where]).to(h.dtype)
        return h

    return edited_site(subject, layer, site, swap)


def _nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, predicted: torch.Tensor) -> float:
    """Summed cross-entropy of the next token at the positions ``predicted`` ``[B, P - 1]``."""
    return float(F.cross_entropy(logits[:, :-1][predicted].float(), input_ids[:, 1:][predicted], reduction="sum"))


@torch.inference_mode()
def evaluate_sae(subject: SubjectModel, sae: SAE, windows: list[Window], batch_size: int = 16,
                 progress: Progress = Progress()) -> SAEQuality:
    """FVU, L0, dead fraction and the next-token loss clean / spliced / zeroed of ``sae`` on ``windows`` (which
    should be held out from its training)."""
    check_fits(sae, subject)
    width = sae.d_in
    sae = sae.to(subject.device)
    key = (sae.layer, sae.site)
    n, l0, left_out = 0, 0, 0
    sq_err = torch.zeros((), dtype=torch.float64)
    sum_x = torch.zeros(width, dtype=torch.float64)
    sum_sq = torch.zeros((), dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    nll = {"clean": 0.0, "spliced": 0.0, "zero": 0.0}
    n_pred = 0
    bar = progress.bar(sum(len(w.token_ids) for w in windows), f"evaluate SAE L{sae.layer} {sae.site}", unit="tok",
                       unit_scale=True)
    try:
        for enc in _batches(subject, windows, batch_size):
            ids, attn = enc.input_ids.to(subject.device), enc.attention_mask.to(subject.device)
            with site_hooks(subject, [key], stop_when_done=False) as captured:
                logits = subject.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            used = used_positions(captured[key], enc)
            predicted = used[:, :-1] & attn[:, 1:].bool()  # from a used position to the real token after it
            x = captured[key][used].float()
            f = sae.encode(x)
            x64 = x.double().cpu()
            sq_err += (x64 - sae.decode(f).double().cpu()).pow(2).sum()
            sum_x += x64.sum(0)
            sum_sq += x64.pow(2).sum()
            active = (f != 0).cpu()
            l0 += int(active.sum())
            fired |= active.any(0)
            n += x.shape[0]
            left_out += int(enc.real.sum()) - x.shape[0]
            nll["clean"] += _nll_sum(logits, ids, predicted)
            for name, fn in (("spliced", lambda v: sae.decode(sae.encode(v))), ("zero", torch.zeros_like)):
                with replaced_site(subject, sae.layer, sae.site, used, fn):
                    nll[name] += _nll_sum(subject.model(input_ids=ids, attention_mask=attn, use_cache=False).logits,
                                          ids, predicted)
            n_pred += int(predicted.sum())
            bar.update(int(enc.real.sum()))
    finally:
        bar.close()
    if n == 0:
        raise UserError("no tokens to evaluate the SAE on")
    total_var = float(sum_sq - sum_x.pow(2).sum() / n)
    loss = {name: v / max(n_pred, 1) for name, v in nll.items()}
    return SAEQuality(eval_tokens=n, massive_left_out=left_out, fvu=float(sq_err) / total_var, l0=l0 / n,
                      dead_fraction=float((~fired).float().mean()), loss_clean=loss["clean"],
                      loss_spliced=loss["spliced"], loss_zero=loss["zero"])
