"""Weight-based projection of units onto the vocabulary (Lim & Lauw's modes i..iv), batched per layer.

Each unit becomes one single-position "sequence" whose residual stream is the unit's vector alone:

A dictionary feature (``sae=``) is projected like a neuron in the hi-* modes, with its decoder row as the vector
it writes at its site (hi-c runs the blocks after the site).

- hi-i: the neuron's one-hot through the MLP output projection *module* (its w_out row plus the projection's
  bias, if the model has one: GPT-2, NeoX), then final norm + unembedding. One matrix product per batch.
- hi-c: the same vector as the residual stream after block L, then blocks L+1.. end, final norm, unembedding.
- lo-c: a residual one-hot entering block L, then blocks L.. end, final norm, unembedding.
- lo-i: a residual one-hot through block L only (attention and MLP with their residual adds, as the
  reference's ``transformer_block`` / ``forward_mod`` on the one vector), then final norm + unembedding.

These follow the reference code (picoGPT and LLaMA modifications in PreferredAI/superposed-topics): no token or
position embedding is added, and the injected vector *is* the residual stream. On a single position,
attention attends only to itself (softmax over one key = 1), and rotary embeddings at position 0 are the
identity, so the choice of position does not matter; we run the model's own block modules with the exact
arguments the model itself passes them for a one-token sequence (captured once by forward pre-hooks), so
norms, rotary tables, masks and per-layer attention types are the model's own. Masks and rotary tables are
captured for batch 1 and broadcast over the batch.

Logits are ``lm_head(final_norm(h))``; a final logit soft-cap (Gemma) is not applied: it is monotonic and
leaves every ranking unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from analysis.models import SubjectModel
from analysis.topics.types import Polarity, ProjectionMode, TokenRanking
from analysis.types import UnitId, UserError

def d_model(subject: SubjectModel) -> int:
    return int(subject.w_out(0).shape[1])


def n_units(subject: SubjectModel, mode: ProjectionMode) -> int:
    """How many units a layer has in this mode (d_mlp neurons or d_model residual dimensions)."""
    return subject.info.d_mlp if ProjectionMode(mode).unit_kind == "neuron" else d_model(subject)


def _block_call_args(subject: SubjectModel) -> list[tuple[tuple, dict]]:
    """The (positional args after hidden_states, kwargs) the model passes each block for one token."""
    blocks = subject.blocks()
    captured: list[tuple[tuple, dict] | None] = [None] * len(blocks)
    handles = []

    def make_hook(i):
        def hook(_module, args, kwargs):
            captured[i] = (tuple(args[1:]), {k: v for k, v in kwargs.items() if k != "hidden_states"})

        return hook

    try:
        for i, block in enumerate(blocks):
            handles.append(block.register_forward_pre_hook(make_hook(i), with_kwargs=True))
        ids = torch.zeros((1, 1), dtype=torch.long, device=subject.device)
        with torch.inference_mode():
            subject.base()(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = []
    for i, c in enumerate(captured):
        if c is None:
            raise RuntimeError(f"block {i} was not called in a forward pass")
        args, kwargs = c
        for v in list(args) + list(kwargs.values()):
            if type(v).__name__.endswith("Cache"):
                raise RuntimeError("the model passed a KV cache to its blocks with use_cache=False")
        out.append((args, kwargs))
    return out


def _run_blocks(subject: SubjectModel, h: torch.Tensor, first: int, last: int, call_args) -> torch.Tensor:
    """Run blocks first..last-1 on ``h`` ``[batch, 1, d_model]``."""
    blocks = subject.blocks()
    for i in range(first, last):
        args, kwargs = call_args[i]
        out = blocks[i](h, *args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
    return h


def _unit_vectors(subject: SubjectModel, layer: int, mode: ProjectionMode, units: torch.Tensor, sae=None
                  ) -> torch.Tensor:
    """``[len(units), d_model]``: what each unit writes into the residual stream (a feature: its decoder row)."""
    dtype = next(subject.model.parameters()).dtype
    if sae is not None:
        return sae.W_dec[units.cpu()].to(device=subject.device, dtype=dtype)
    if mode.unit_kind == "neuron":
        onehot = torch.zeros((len(units), subject.info.d_mlp), dtype=dtype, device=subject.device)
        onehot[torch.arange(len(units)), units] = 1.0
        return subject.out_proj(layer)(onehot)  # the module itself: weight row + bias
    onehot = torch.zeros((len(units), d_model(subject)), dtype=dtype, device=subject.device)
    onehot[torch.arange(len(units)), units] = 1.0
    return onehot


def _check_units(subject: SubjectModel, layer: int, mode: ProjectionMode, units: Sequence[int] | None,
                 sae=None) -> list[int]:
    subject.check_layer(layer)
    if sae is not None and (mode.unit_kind != "neuron" or sae.layer != layer):
        raise UserError(f"dictionary features project in the hi-* modes at their own layer ({sae.layer}), not "
                        f"{mode.value} at layer {layer}")
    total = n_units(subject, mode) if sae is None else sae.d_sae
    if units is None:
        return list(range(total))
    units = [int(u) for u in units]
    bad = [u for u in units if not 0 <= u < total]
    if bad:
        kind = "neuron" if mode.unit_kind == "neuron" else "residual dimension"
        raise UserError(f"{kind} {bad[0]} does not exist: {mode.value} units are 0..{total - 1}")
    return units


def _logits_batches(subject: SubjectModel, layer: int, mode: ProjectionMode, units: list[int], batch_size: int,
                    sae=None):
    n_layers = subject.info.n_layers
    call_args = _block_call_args(subject) if mode != ProjectionMode.HI_I else None
    after = layer if sae is not None and sae.writes == "resid_pre" else layer + 1  # first block after the write
    span = {ProjectionMode.HI_I: (0, 0), ProjectionMode.HI_C: (after, n_layers),
            ProjectionMode.LO_C: (layer, n_layers), ProjectionMode.LO_I: (layer, layer + 1)}[mode]
    norm = subject.final_norm()
    head = subject.model.get_output_embeddings()
    with torch.inference_mode():
        for b in range(0, len(units), batch_size):
            chunk = torch.tensor(units[b : b + batch_size], device=subject.device)
            h = _unit_vectors(subject, layer, mode, chunk, sae)[:, None, :]
            if span[1] > span[0]:
                h = _run_blocks(subject, h, span[0], span[1], call_args)
            yield chunk, head(norm(h))[:, 0, :].float()


def projection_logits(subject: SubjectModel, layer: int, mode: ProjectionMode | str,
                      units: Sequence[int] | None = None, batch_size: int = 256, sae=None) -> torch.Tensor:
    """``[len(units), vocab]`` float32 logits of each unit's projection (all units of the layer if None); with
    ``sae``, its features' decoder rows in the hi-* modes."""
    mode = ProjectionMode(mode)
    units = _check_units(subject, layer, mode, units, sae)
    parts = [logits.cpu() for _, logits in _logits_batches(subject, layer, mode, units, batch_size, sae)]
    return torch.cat(parts) if parts else torch.zeros((0, subject.model.get_output_embeddings().weight.shape[0]))


def project_rankings(subject: SubjectModel, layer: int, mode: ProjectionMode | str,
                     units: Sequence[int] | None = None, tau: int = 900, batch_size: int = 256,
                     polarities: Sequence[Polarity] = (Polarity.POS, Polarity.NEG), sae=None) -> list[TokenRanking]:
    """Each unit's top-tau (pos) and bottom-tau (neg) tokens by projected logit, most extreme first.

    Memory stays at one batch of logits (``batch_size x vocab``). Output order: unit by unit, polarities in
    the order given.
    """
    mode = ProjectionMode(mode)
    units = _check_units(subject, layer, mode, units, sae)
    source = mode.unit_source if sae is None else sae.source
    out: list[TokenRanking] = []
    for chunk, logits in _logits_batches(subject, layer, mode, units, batch_size, sae):
        t = min(tau, logits.shape[1])
        ends = {}
        for pol in polarities:
            vals, ids = torch.topk(logits, t, dim=1, largest=Polarity(pol) == Polarity.POS, sorted=True)
            ends[Polarity(pol)] = (ids.cpu().tolist(), vals.cpu().tolist())
        for row, unit in enumerate(chunk.tolist()):
            for pol, (ids, vals) in ends.items():
                out.append(TokenRanking(mode=mode.value, unit=UnitId(source, layer, int(unit)), polarity=pol,
                                        token_ids=tuple(ids[row]), scores=tuple(vals[row])))
    return out
