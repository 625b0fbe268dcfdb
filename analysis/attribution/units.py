"""The prompt's units: targets, activations relative to the corpus maximum, rankings and maps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.types import UnitId

Key = tuple[str, int]
"""(source, layer): one source's units at one layer, as ``analysis.activations.Reader.key``."""


@dataclass(frozen=True)
class Target:
    """What an attribution explains: the logit of ``token`` for the next token after ``position``, minus the logit
    of ``contrast`` when there is one (a logit difference)."""

    position: int
    token: int | None
    """None: the model's top prediction there (``attribute`` resolves it from its own forward pass)."""
    contrast: int | None = None

    def of(self, logits: torch.Tensor) -> torch.Tensor:
        """The target's value from ``[..., vocab]`` logits at ``position``."""
        value = logits[..., self.token]
        return value - logits[..., self.contrast] if self.contrast is not None else value


@dataclass(frozen=True)
class UnitAt:
    """A unit at one position of the prompt, with a number about it there."""

    unit: UnitId
    position: int
    value: float
    """What it is ranked by: a relative activation, an attribution, ..."""
    activation: float = 0.0


# ---- what fires ----------------------------------------------------------------------------------------------

def relative(acts: dict[Key, torch.Tensor], maxima: dict[Key, torch.Tensor | None]) -> dict[Key, torch.Tensor]:
    """Each activation divided by its unit's corpus maximum (from the harvest: ``maxima[key]`` is ``[n_units]``);
    a unit with no positive maximum keeps 0, a key without maxima (no harvest) keeps the raw value."""
    out = {}
    for key, a in acts.items():
        m = maxima.get(key)
        if m is None:
            out[key] = a
            continue
        m = m.to(a.dtype)
        out[key] = torch.where(m > 0, a / torch.where(m > 0, m, torch.ones_like(m)), torch.zeros_like(a))
    return out


def top_units(scores: dict[Key, torch.Tensor], k: int, position: int | None = None, largest: bool = True,
              acts: dict[Key, torch.Tensor] | None = None) -> list[UnitAt]:
    """The ``k`` (unit, position) pairs of highest score (``largest=False``: lowest), over every key; only at
    ``position`` when given. Ties go to the earlier key, position, unit."""
    cands = []
    for key, s in scores.items():
        block = s[position:position + 1] if position is not None else s
        flat = block.reshape(-1)
        n = min(k, flat.numel())
        if n == 0:
            continue
        vals, idx = torch.topk(flat if largest else -flat, n)
        for v, i in zip(vals.tolist(), idx.tolist()):
            t, u = divmod(i, block.shape[1])
            t = t + (position or 0)
            a = float(acts[key][t, u]) if acts is not None else float(s[t, u])
            cands.append(UnitAt(UnitId(key[0], key[1], u), t, v if largest else -v, a))
    cands.sort(key=lambda c: -c.value if largest else c.value)
    return cands[:k]


def layer_position_map(scores: dict[Key, torch.Tensor], n_layers: int, reduce: str = "max") -> torch.Tensor:
    """``[n_layers, T]``: per layer and position the largest score of its units (``reduce="max"``) or the sum of
    their absolute scores (``"abs"``); dictionaries add to their layer."""
    T = next(iter(scores.values())).shape[0]
    out = torch.zeros(n_layers, T)
    for (source, layer), s in scores.items():
        if reduce == "max":
            out[layer] = torch.maximum(out[layer], s.max(dim=1).values)
        else:
            out[layer] += s.abs().sum(dim=1)
    return out
