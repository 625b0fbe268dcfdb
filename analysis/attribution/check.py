"""The top units set to 0 for real beside their linear estimates."""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from analysis.activations import edited_features, edited_site
from analysis.causal import fork_at
from analysis.models import SubjectModel
from analysis.types import MLP, UserError
from analysis.attribution.frozen import check_target
from analysis.attribution.units import Target, UnitAt

if TYPE_CHECKING:
    from analysis.sae.model import SAE

# ---- check by intervention -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Checked:
    """A unit's linear estimate beside the real change of the target when it is set to 0 at its position."""

    unit: UnitAt
    estimate: float
    """``−attribution``: the first-order change of the target."""
    real: float

    @property
    def agrees(self) -> bool:
        """Same sign and within a factor 2 of each other (both near 0 counts as agreeing)."""
        small = 1e-6 + 1e-3 * max(abs(self.estimate), abs(self.real))
        if abs(self.estimate) <= small and abs(self.real) <= small:
            return True
        return self.estimate * self.real > 0 and 0.5 <= abs(self.real) / max(abs(self.estimate), 1e-12) <= 2.0


def check_by_ablation(subject: SubjectModel, token_ids: list[int], target: Target, units: list[UnitAt],
                      saes: tuple["SAE", ...] = ()) -> list[Checked]:
    """Each unit set to 0 at its position, for real (no freezing); the change of the target per unit.

    A unit changes nothing before its position, so units share batched passes of ``len(group) + 1`` rows (row 0
    clean) over the positions from the group's first to the target's only, the earlier positions read from the
    key-value cache of one clean pass (``_position_groups`` picks the groups); a unit after the target's position
    changes nothing. A model whose cache cannot be cut back (a sliding window already full) runs every unit in one
    batch of ``len(units) + 1`` rows from the earliest layer involved (``fork_at``) instead."""
    if not units:
        return []
    check_target(subject, token_ids, target)
    by_source = {s.source: s for s in saes}
    for u in units:
        if u.unit.source != MLP and u.unit.source not in by_source:
            raise UserError(f"{u.unit} needs its dictionary ({u.unit.source}) to be ablated")
    live = [(i, u) for i, u in enumerate(units) if u.position <= target.position]
    ids = torch.tensor([token_ids[:target.position + 1]], dtype=torch.int64, device=subject.device)
    groups = _position_groups([u.position for _i, u in live], ids.shape[1])
    with torch.inference_mode():
        caches = _cut_caches(subject, ids, sorted(groups))
        deltas = (_ablate_cached(subject, ids, target, live, by_source, caches, groups) if caches is not None
                  else _ablate_forked(subject, ids, target, live, by_source))
    return [Checked(u, -u.value, deltas.get(i, 0.0)) for i, u in enumerate(units)]


def _zeroed(subject: SubjectModel, layer: int, source: str, edits: list[tuple[int, UnitAt, int]], by_source: dict):
    """A context in which each (row, unit, position) of ``edits`` (units of one source at one layer) is set to 0: a
    neuron at its site, a feature by removing its activation times its decoder direction where the decoder writes,
    the activation encoded from what the dictionary reads (``edited_features``)."""
    if source == MLP:
        def neurons(h):
            h = h.clone()
            for row, u, t in edits:
                h[row, t, u.unit.index] = 0
            return h
        return edited_site(subject, layer, "mlp_in", neurons)
    sae = by_source[source]

    def features(h, x):
        h = h.clone()
        for row, u, t in edits:
            a = sae.encode(x[row, t].float())[u.unit.index]
            direction = sae.direction(u.unit.index).to(h.device, torch.float32)
            h[row, t] = (h[row, t].float() - a * direction).to(h.dtype)
        return h
    return edited_features(subject, sae, features)


def _edits_by_source(rows: list[tuple[int, UnitAt, int]]) -> dict[tuple[int, str], list[tuple[int, UnitAt, int]]]:
    """``{(layer, source): [(row, unit, position)]}``."""
    out: dict[tuple[int, str], list] = {}
    for row, u, t in rows:
        out.setdefault((u.unit.layer, u.unit.source), []).append((row, u, t))
    return out


def _position_groups(positions: list[int], length: int) -> dict[int, int]:
    """``{first position: last position}`` of the runs of positions that share a batch, chosen to process the fewest
    (row, token) pairs: a run starting at ``q`` costs (its units + a clean row) × (``length`` − ``q``) tokens."""
    qs = sorted(set(positions))
    count = {q: positions.count(q) for q in qs}
    best = [0.0] + [float("inf")] * len(qs)
    start = [0] * (len(qs) + 1)
    for b in range(1, len(qs) + 1):
        for a in range(1, b + 1):
            cost = best[a - 1] + (1 + sum(count[q] for q in qs[a - 1:b])) * (length - qs[a - 1])
            if cost < best[b]:
                best[b], start[b] = cost, a
    out, b = {}, len(qs)
    while b > 0:
        a = start[b]
        out[qs[a - 1]] = qs[b - 1]
        b = a - 1
    return out


def _cut_caches(subject: SubjectModel, ids: torch.Tensor, positions: list[int]) -> dict | None:
    """``{position: the clean pass's cache of the positions before it}`` (None at 0), or None when the model's cache
    cannot be cut back to a position."""
    import copy

    if not positions:
        return {}
    full = subject.base()(input_ids=ids, use_cache=True).past_key_values
    out = {}
    try:
        for q in positions:
            if q == 0:
                out[q] = None
                continue
            cache = copy.deepcopy(full)
            cache.crop(q - ids.shape[1])
            if cache.get_seq_length() != q:
                return None
            out[q] = cache
    except (RuntimeError, ValueError, NotImplementedError, AttributeError):
        return None
    return out


def _ablate_cached(subject: SubjectModel, ids: torch.Tensor, target: Target, live: list[tuple[int, UnitAt]],
                   by_source: dict, caches: dict, groups: dict[int, int]) -> dict[int, float]:
    deltas = {}
    for q, cache in caches.items():
        group = [(i, u) for i, u in live if q <= u.position <= groups[q]]
        n = len(group) + 1
        if cache is not None:
            cache.batch_repeat_interleave(n)
        sites = _edits_by_source([(row, u, u.position - q) for row, (_i, u) in enumerate(group, start=1)])
        with ExitStack() as stack:
            for (layer, source), edits in sites.items():
                stack.enter_context(_zeroed(subject, layer, source, edits, by_source))
            hidden = subject.base()(input_ids=ids[:, q:].expand(n, -1), past_key_values=cache,
                                    use_cache=cache is not None).last_hidden_state[:, -1]
        values = target.of(subject.logits(hidden).float())
        deltas.update({i: float(values[row] - values[0]) for row, (i, _u) in enumerate(group, start=1)})
    return deltas


def _ablate_forked(subject: SubjectModel, ids: torch.Tensor, target: Target, live: list[tuple[int, UnitAt]],
                   by_source: dict) -> dict[int, float]:
    if not live:
        return {}
    sites = _edits_by_source([(row, u, u.position) for row, (_i, u) in enumerate(live, start=1)])
    with ExitStack() as stack:
        stack.enter_context(fork_at(subject, min(layer for layer, _source in sites), len(live) + 1))
        for (layer, source), edits in sites.items():
            stack.enter_context(_zeroed(subject, layer, source, edits, by_source))
        hidden = subject.base()(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    values = target.of(subject.logits(hidden).float())
    return {i: float(values[row] - values[0]) for row, (i, _u) in enumerate(live, start=1)}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (None for fewer than 3 pairs or a constant side)."""
    import scipy.stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(scipy.stats.spearmanr(xs, ys).statistic)
