"""How well a dictionary stands in for what it reconstructs, on held-out windows: an SAE for its site, a transcoder
for the MLP output it predicts.

At the used positions (``analysis.sae_train.used_positions``: real tokens, not the BOS column, not massive
activations -- for a transcoder, typical at both its input and its output): FVU, L0 and dead features, and the
model's next-token loss clean, with what the dictionary writes replaced by its output, and with it zeroed. A
transcoder's output replaces the MLP's (``edited_features``: its input is read in the same forward pass), once with
its error term added back (the check: the loss is then the clean one) and once without (the number that matters).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from analysis.activations import edited_features, edited_site, site_hooks
from analysis.models import SubjectModel
from analysis.progress import Progress
from analysis.sae.model import SAE, check_fits
from analysis.sae_train import _batches, used_positions
from analysis.types import UserError, Window


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


@dataclass(frozen=True)
class TranscoderQuality(SAEQuality):
    """A transcoder's numbers: those of ``SAEQuality`` for the MLP output it predicts -- ``fvu`` is
    sum |y - y_hat|^2 / sum |y - mean(y)|^2 of the MLP output ``y``; ``loss_spliced`` the loss with the MLP output
    replaced by the transcoder's alone (no error term: the loss recovered); ``loss_zero`` with the MLP output
    zeroed -- and the check below."""

    loss_with_error: float
    """Next-token loss with the MLP output replaced by the transcoder's output plus its error y - y_hat (a check of
    the splicing: equals ``loss_clean`` up to float rounding)."""


def replaced_site(subject: SubjectModel, layer: int, site: str, where: torch.Tensor,
                  fn: Callable[[torch.Tensor], torch.Tensor]):
    """Inside the ``with`` block, forward passes see the site's vectors at positions ``where`` (``[B, P]`` bool)
    replaced by ``fn`` of them (``[n, width]`` -> ``[n, width]``). The hook is always removed."""
    def swap(h: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[where] = fn(h[where]).to(h.dtype)
        return h

    return edited_site(subject, layer, site, swap)


def replaced_output(subject: SubjectModel, sae: SAE, where: torch.Tensor,
                    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]):
    """Inside the ``with`` block, forward passes see what ``sae`` writes (``sae.writes``) at positions ``where``
    replaced by ``fn(h, x)`` of its vectors there and the dictionary's input there (``[n, d_out]``, ``[n, d_in]``;
    for an SAE ``x`` is ``h``). The hooks are always removed."""
    def swap(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = h.clone()
        h[where] = fn(h[where], x[where]).to(h.dtype)
        return h

    return edited_features(subject, sae, swap)


def _nll_sum(logits: torch.Tensor, input_ids: torch.Tensor, predicted: torch.Tensor) -> float:
    """Summed cross-entropy of the next token at the positions ``predicted`` ``[B, P - 1]``."""
    return float(F.cross_entropy(logits[:, :-1][predicted].float(), input_ids[:, 1:][predicted], reduction="sum"))


@torch.inference_mode()
def evaluate_sae(subject: SubjectModel, sae: SAE, windows: list[Window], batch_size: int = 16,
                 progress: Progress = Progress()) -> SAEQuality:
    """FVU, L0, dead fraction and the next-token loss clean / spliced / zeroed of ``sae`` on ``windows`` (which
    should be held out from its training); for a transcoder a ``TranscoderQuality`` (its output against the MLP
    output, and the loss with its error term kept too)."""
    check_fits(sae, subject)
    sae = sae.to(subject.device)
    keys = [(sae.layer, sae.site)] + ([(sae.layer, sae.output_site)] if sae.is_transcoder else [])
    n, l0, left_out = 0, 0, 0
    sq_err = torch.zeros((), dtype=torch.float64)
    sum_y = torch.zeros(sae.d_out, dtype=torch.float64)
    sum_sq = torch.zeros((), dtype=torch.float64)
    fired = torch.zeros(sae.d_sae, dtype=torch.bool)
    nll = {"clean": 0.0, "spliced": 0.0, "zero": 0.0, **({"with_error": 0.0} if sae.is_transcoder else {})}
    n_pred = 0
    what = f"transcoder L{sae.layer} {sae.site}->{sae.output_site}" if sae.is_transcoder else \
        f"SAE L{sae.layer} {sae.site}"
    bar = progress.bar(sum(len(w.token_ids) for w in windows), f"evaluate {what}", unit="tok", unit_scale=True)
    try:
        for enc in _batches(subject, windows, batch_size):
            ids, attn = enc.input_ids.to(subject.device), enc.attention_mask.to(subject.device)
            with site_hooks(subject, keys, stop_when_done=False) as captured:
                logits = subject.model(input_ids=ids, attention_mask=attn, use_cache=False).logits
            used = used_positions(captured[keys[0]], enc, *(captured[key] for key in keys[1:]))
            predicted = used[:, :-1] & attn[:, 1:].bool()  # from a used position to the real token after it
            x = captured[keys[0]][used].float()
            y = captured[keys[-1]][used].float()  # what the dictionary stands in for: x itself for an SAE
            f = sae.encode(x)
            y_hat = sae.decode(f, x)
            y64 = y.double().cpu()
            sq_err += (y64 - y_hat.double().cpu()).pow(2).sum()
            sum_y += y64.sum(0)
            sum_sq += y64.pow(2).sum()
            active = (f != 0).cpu()
            l0 += int(active.sum())
            fired |= active.any(0)
            n += x.shape[0]
            left_out += int(enc.real.sum()) - x.shape[0]
            nll["clean"] += _nll_sum(logits, ids, predicted)
            error = y - y_hat
            edits = {"spliced": lambda _h, v: sae.reconstruct(v),
                     "zero": lambda h, _v: torch.zeros_like(h),
                     "with_error": lambda _h, v: sae.reconstruct(v) + error}
            for name in [name for name in nll if name != "clean"]:
                with replaced_output(subject, sae, used, edits[name]):
                    nll[name] += _nll_sum(subject.model(input_ids=ids, attention_mask=attn, use_cache=False).logits,
                                          ids, predicted)
            n_pred += int(predicted.sum())
            bar.update(int(enc.real.sum()))
    finally:
        bar.close()
    if n == 0:
        raise UserError(f"no tokens to evaluate the {'transcoder' if sae.is_transcoder else 'SAE'} on")
    total_var = float(sum_sq - sum_y.pow(2).sum() / n)
    loss = {name: v / max(n_pred, 1) for name, v in nll.items()}
    common = dict(eval_tokens=n, massive_left_out=left_out, fvu=float(sq_err) / total_var, l0=l0 / n,
                  dead_fraction=float((~fired).float().mean()), loss_clean=loss["clean"],
                  loss_spliced=loss["spliced"], loss_zero=loss["zero"])
    if sae.is_transcoder:
        return TranscoderQuality(**common, loss_with_error=loss["with_error"])
    return SAEQuality(**common)
