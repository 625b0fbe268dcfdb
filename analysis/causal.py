"""The causal lens: what a unit does to the model's output when it is ablated or steered.

An intervention edits one unit at its site during forward passes, always through ``unit_edit`` (a hook that is
removed on the way out, also on an exception):
- an MLP neuron: its activation, the input of the MLP output projection (the harvest's hook point), is replaced;
- a dictionary feature: the site vector ``h`` becomes ``h + (a' - a) · d``, with ``a`` the feature's activation
  (the SAE's encoding of ``h``) and ``d`` its decoded direction: the reconstruction error stays in ``h``, so an
  edit that keeps ``a`` reproduces the clean model exactly. A transcoder feature is edited the same way at the
  site its decoder writes (the MLP's output), ``a`` encoded from the MLP's normed input.

``ablate``: the text once through the blocks before the unit's layer, then as two rows (clean, edited) through
the rest (``fork_at``): per position the change in log-probability of the actual next token, and the next-token
predictions that moved most. ``steer``: the
same prompt generated twice, plain and with the unit set to ``k`` × its max (neuron) or with ``k`` × its decoder
direction added (feature), seeded. ``effects``: the mean change in next-token loss over a unit's records when it
is ablated, and the tokens whose log-probabilities it raises / lowers most in those contexts.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from analysis.activations import edited_features, edited_site
from analysis.models import SubjectModel
from analysis.types import MLP, Effects, UnitId, UnitStats, UserError

if TYPE_CHECKING:
    from analysis.sae.model import SAE

MODES = ("zero", "mean", "value")
"""Ablations: set the unit to 0, to its mean over the harvest, or to a value the user gives."""
MAX_ABS_VALUE = 1e6
"""A set value or a steering factor beyond this is refused (it only produces NaNs and noise)."""


@dataclass(frozen=True)
class Edit:
    """What an intervention does to the unit's activation ``a`` at every edited position: ``a' = scale · a +
    shift`` (ablation to ``v``: scale 0, shift ``v``; steering a neuron to ``k`` × max: scale 0, shift ``k · max``;
    a feature's steering adds ``shift`` times its direction: scale 1)."""

    scale: float
    shift: float

    def check(self) -> "Edit":
        for name, v in (("scale", self.scale), ("value", self.shift)):
            if not math.isfinite(v) or abs(v) > MAX_ABS_VALUE:
                raise UserError(f"the intervention's {name} {v!r} is not a usable number (finite, |x| ≤ "
                                f"{MAX_ABS_VALUE:g})")
        return self


@contextmanager
def unit_edit(subject: SubjectModel, unit: UnitId, edit: Edit, sae: "SAE | None" = None,
              rows: torch.Tensor | None = None) -> Iterator[None]:
    """Inside the block, forward passes see ``unit`` edited by ``edit`` at every position of the batch rows
    ``rows`` (``[B]`` bool; default all). The hook is always removed."""
    edit.check()
    if unit.source == MLP:
        subject.check_neuron(unit.index)
    else:
        if sae is None or sae.source != unit.source:
            raise UserError(f"feature {unit} needs its dictionary ({unit.source}) to be intervened on")
        if not 0 <= unit.index < sae.d_sae:
            raise UserError(f"feature {unit.index} does not exist: {sae.name} has {sae.d_sae} (0 .. {sae.d_sae - 1})")
    subject.check_layer(unit.layer)

    def pick(t: torch.Tensor) -> torch.Tensor:
        return t if rows is None else t[rows.to(t.device)]

    def put(h: torch.Tensor, picked: torch.Tensor) -> torch.Tensor:
        if rows is None:
            return picked
        out = h.clone()
        out[rows.to(h.device)] = picked
        return out

    def neuron(h: torch.Tensor) -> torch.Tensor:
        picked = pick(h).clone()
        picked[..., unit.index] = (edit.scale * picked[..., unit.index].float() + edit.shift).to(h.dtype)
        return put(h, picked)

    def feature(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        picked = pick(h)
        a = sae.encode(pick(x))[..., unit.index].float()
        delta = (edit.scale - 1.0) * a + edit.shift
        direction = sae.direction(unit.index).to(picked.device, torch.float32)
        return put(h, (picked.float() + delta[..., None] * direction).to(h.dtype))

    with (edited_site(subject, unit.layer, "mlp_in", neuron) if unit.source == MLP
          else edited_features(subject, sae, feature)):
        yield


def fork_at(subject: SubjectModel, layer: int, n: int = 2):
    """Inside the ``with`` block, a forward pass of one row continues as ``n`` identical rows from block ``layer``
    on: the blocks before it (the same for a clean and an edited copy) run once. The hook runs before any other on
    that block and is always removed."""
    return edited_site(subject, layer, "resid_pre",
                       lambda h: h.expand(n, *h.shape[1:]).contiguous() if h.shape[0] == 1 else h, first=True)


def ablation_edit(mode: str, mean: float | None = None, value: float | None = None) -> Edit:
    """The edit of an ablation ``mode`` (``MODES``)."""
    if mode == "zero":
        return Edit(0.0, 0.0)
    if mode == "mean":
        if mean is None:
            raise UserError("mean ablation needs the unit's mean (from its harvest)")
        return Edit(0.0, float(mean))
    if mode == "value":
        if value is None:
            raise UserError("--value is needed for the 'value' ablation")
        return Edit(0.0, float(value)).check()
    raise UserError(f"unknown ablation {mode!r}: use one of {', '.join(MODES)}")


def steering_edit(unit: UnitId, max_activation: float, clamp: float | None = None, scale: float | None = None
                  ) -> Edit:
    """``clamp`` k: a neuron set to k × its max, a feature with k × its max times its decoder direction added;
    or ``scale`` s: the unit's own activation times s (s = 1 changes nothing)."""
    if (clamp is None) == (scale is None):
        raise UserError("steer with either a clamp factor (k × the unit's max) or a scale factor")
    if scale is not None:
        return Edit(float(scale), 0.0).check()
    if not math.isfinite(clamp) or abs(clamp) > MAX_ABS_VALUE:
        raise UserError(f"the steering factor {clamp!r} is not a usable number")
    return Edit(0.0 if unit.source == MLP else 1.0, clamp * max_activation).check()


@dataclass
class Ablation:
    """One text, clean and with the unit ablated. Position ``t`` of the per-token lists is the prediction of token
    ``t + 1`` (the last token predicts nothing)."""

    token_ids: list[int]
    tokens: list[str]
    activations: list[float]
    """The unit's clean activation per token."""
    clean_logprob: list[float]
    ablated_logprob: list[float]
    edit: Edit
    top_changes: list[list[tuple[int, float, float]]] = field(default_factory=list)
    """Per position: (token id, p clean, p ablated) of the next-token predictions whose probability moved most."""

    @property
    def delta(self) -> list[float]:
        """log p(actual next token) ablated − clean, per position."""
        return [a - c for a, c in zip(self.ablated_logprob, self.clean_logprob)]

    def to_json(self, tokenizer=None) -> dict:
        name = (lambda t: tokenizer.decode([t])) if tokenizer is not None else str
        return {"tokens": self.tokens, "token_ids": self.token_ids, "unit_activations": self.activations,
                "edit": {"scale": self.edit.scale, "shift": self.edit.shift},
                "clean_logprob_next": self.clean_logprob, "ablated_logprob_next": self.ablated_logprob,
                "delta_logprob_next": self.delta,
                "note": "position t predicts token t+1; logprobs are natural logs of the full softmax",
                "top_changes": [[{"token_id": t, "token": name(t), "p_clean": pc, "p_ablated": pa}
                                 for t, pc, pa in pos] for pos in self.top_changes]}


def _reader_of(unit: UnitId, sae: "SAE | None"):
    from analysis.activations import neuron_reader, sae_reader

    return neuron_reader(unit.layer) if unit.source == MLP else sae_reader(sae)


@torch.inference_mode()
def ablate(subject: SubjectModel, token_ids: list[int], unit: UnitId, edit: Edit, sae: "SAE | None" = None,
           top: int = 8) -> Ablation:
    """``token_ids`` (no special tokens; the model's BOS is put first) clean and with ``unit`` edited: one row
    through the blocks before the unit's layer, two from there on."""
    if len(token_ids) < 2:
        raise UserError("the text needs at least two tokens (the first predicts the second)")
    limit = subject.context_length
    prefix = subject.bos_prefix
    if limit is not None and len(prefix) + len(token_ids) > limit:
        raise UserError(f"the text has {len(token_ids)} tokens, more than the model's context ({limit - len(prefix)})")
    ids = torch.tensor([prefix + token_ids], device=subject.device)
    reader = _reader_of(unit, sae)
    from analysis.activations import site_hooks

    rows = torch.tensor([False, True])
    with site_hooks(subject, [(unit.layer, reader.site)], stop_when_done=False) as captured:
        with fork_at(subject, unit.layer), unit_edit(subject, unit, edit, sae, rows=rows):
            logits = subject.model(input_ids=ids, use_cache=False).logits.float()
    acts = reader.units(captured[(unit.layer, reader.site)][:1])[0, len(prefix):, unit.index].tolist()
    logp = torch.log_softmax(logits[:, len(prefix):], dim=-1)  # [2, T, V]
    nxt = torch.tensor(token_ids[1:], device=logp.device)
    picked = logp[:, :-1].gather(-1, nxt[None, :, None].expand(2, -1, 1))[..., 0]  # [2, T-1]
    p = logp[:, :-1].exp()
    moved = (p[1] - p[0]).abs()
    k = min(top, p.shape[-1])
    idx = moved.topk(k, dim=-1).indices  # [T-1, k]
    changes = [[(int(t), float(p[0, pos, t]), float(p[1, pos, t])) for t in idx[pos]] for pos in range(idx.shape[0])]
    tokens = subject.tokenizer.batch_decode([[t] for t in token_ids], clean_up_tokenization_spaces=False)
    return Ablation(list(token_ids), tokens, acts, picked[0].tolist(), picked[1].tolist(), edit, changes)


def ablate_unit(subject: SubjectModel, token_ids: list[int], unit: UnitId, mode: str, stats: UnitStats | None,
                value: float | None = None, sae: "SAE | None" = None) -> Ablation:
    """``ablate`` with the ablation a user picks: ``mode`` (``MODES``), the unit's harvest ``stats`` (its mean for
    'mean'; None when not harvested) and ``value`` for 'value'. The CLI's job and the viewer's pages both come
    here."""
    return ablate(subject, token_ids, unit, ablation_edit(mode, mean=stats.mean if stats is not None else None,
                                                          value=value), sae)


@dataclass
class Steering:
    prompt_ids: list[int]
    plain: list[int]
    steered: list[int]
    """The generated token ids (after the prompt), without and with the edit."""
    edit: Edit
    seed: int
    temperature: float
    max_new_tokens: int

    def to_json(self, tokenizer) -> dict:
        text = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
        return {"prompt": text(self.prompt_ids), "prompt_ids": self.prompt_ids, "plain": text(self.plain),
                "plain_ids": self.plain, "steered": text(self.steered), "steered_ids": self.steered,
                "edit": {"scale": self.edit.scale, "shift": self.edit.shift}, "seed": self.seed,
                "temperature": self.temperature, "max_new_tokens": self.max_new_tokens}


@torch.inference_mode()
def generate(subject: SubjectModel, prompt_ids: list[int], max_new_tokens: int, temperature: float, seed: int
             ) -> list[int]:
    """Greedy (temperature 0) or sampled continuation of ``prompt_ids`` (BOS put first), seeded; the new ids."""
    if not prompt_ids:
        raise UserError("the prompt is empty")
    if max_new_tokens < 1:
        raise UserError("generate at least one token")
    if not math.isfinite(temperature) or temperature < 0:
        raise UserError(f"temperature {temperature!r}: use 0 (greedy) or a positive number")
    prefix = subject.bos_prefix
    limit = subject.context_length
    if limit is not None and len(prefix) + len(prompt_ids) + max_new_tokens > limit:
        raise UserError(f"prompt + new tokens ({len(prompt_ids)} + {max_new_tokens}) exceed the model's context "
                        f"({limit - len(prefix)})")
    ids = torch.tensor([prefix + prompt_ids], device=subject.device)
    torch.manual_seed(seed)
    kwargs = dict(do_sample=True, temperature=temperature, top_k=0, top_p=1.0) if temperature > 0 else \
        dict(do_sample=False)
    out = subject.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                                 pad_token_id=subject.pad_id, eos_token_id=None, **kwargs)
    return out[0, ids.shape[1]:].tolist()


def steer(subject: SubjectModel, prompt_ids: list[int], unit: UnitId, edit: Edit, sae: "SAE | None" = None,
          max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0) -> Steering:
    """The prompt's continuation plain and with the unit edited at every position (prompt and new tokens)."""
    plain = generate(subject, prompt_ids, max_new_tokens, temperature, seed)
    with unit_edit(subject, unit, edit, sae):
        steered = generate(subject, prompt_ids, max_new_tokens, temperature, seed)
    return Steering(list(prompt_ids), plain, steered, edit, seed, temperature, max_new_tokens)


def steer_unit(subject: SubjectModel, prompt_ids: list[int], unit: UnitId, stats: UnitStats,
               clamp: float | None = None, scale: float | None = None, sae: "SAE | None" = None,
               max_new_tokens: int = 32, temperature: float = 0.0, seed: int = 0) -> Steering:
    """``steer`` with the edit a user picks: ``clamp`` k (× the unit's harvest max, from ``stats``) or ``scale``
    (``steering_edit``). The CLI's job and the viewer's page both come here."""
    return steer(subject, prompt_ids, unit, steering_edit(unit, stats.max, clamp=clamp, scale=scale), sae,
                 max_new_tokens, temperature, seed)


@torch.inference_mode()
def effects(subject: SubjectModel, unit: UnitId, edit: Edit, mode: str, top_records: list, random_records: list,
            sae: "SAE | None" = None, k: int = 10, batch_size: int = 8,
            progress: Callable[[int], None] | None = None) -> Effects:
    """Mean next-token loss change and promoted / suppressed tokens over ``top_records`` and ``random_records``
    (ActivationRecord: their token ids are re-run; the edit applies at every position)."""
    recs = [(r, True) for r in top_records] + [(r, False) for r in random_records]
    recs = [(r, top) for r, top in recs if len(r.token_ids) >= 2]
    if not recs:
        raise UserError(f"{unit} has no record of two tokens or more to measure its effect on")
    total = top_total = 0.0
    n = n_top = 0
    vocab_sum = None
    for i in range(0, len(recs), batch_size):
        part = recs[i:i + batch_size]
        enc = subject.encode([list(r.token_ids) for r, _ in part])
        ids, mask = enc.input_ids.to(subject.device), enc.attention_mask.to(subject.device)
        clean = subject.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        with unit_edit(subject, unit, edit, sae):
            ablated = subject.model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        lc, la = torch.log_softmax(clean, -1), torch.log_softmax(ablated, -1)
        for row, (rec, is_top) in enumerate(part):
            t = len(rec.token_ids)
            sl = slice(enc.n_prefix, enc.n_prefix + t - 1)
            nxt = ids[row, enc.n_prefix + 1: enc.n_prefix + t]
            change = (lc[row, sl].gather(-1, nxt[:, None]) - la[row, sl].gather(-1, nxt[:, None]))[:, 0]
            total += float(change.sum())
            n += t - 1
            if is_top:
                top_total += float(change.sum())
                n_top += t - 1
            diff = (lc[row, sl] - la[row, sl]).sum(0).double()
            vocab_sum = diff if vocab_sum is None else vocab_sum + diff
        if progress:
            progress(len(part))
    mean_vocab = vocab_sum / n
    order = torch.argsort(mean_vocab, descending=True)
    promoted = [(int(t), float(mean_vocab[t])) for t in order[:k]]
    suppressed = [(int(t), float(mean_vocab[t])) for t in order.flip(0)[:k]]
    return Effects(unit, mode, len(recs), n, total / n,
                   top_total / n_top if n_top else float("nan"), promoted, suppressed)
