"""Start from a prompt: which units fire (relative to their own corpus maximum), which cause a prediction
(attribution through the frozen model), checked by intervention, and how the causes connect.

Units are read as everywhere else (``analysis.activations``): every MLP neuron of every layer (the input of the
MLP's output projection) and every feature of the dictionaries given (encoded at their site).

**Frozen model.** Inside ``frozen``, every attention pattern and every normalisation denominator (LayerNorm's
standard deviation, RMSNorm's root mean square, the final norm's too) is a constant for gradients, as attribution
graphs freeze them: forward values are unchanged (the patterns are computed from detached queries and keys; a
norm's output is its own value plus a zero-valued linear term with the clean denominator). The MLPs' own
nonlinearities stay. A unit's **attribution** to a target ``m`` is ``a · ∂m/∂a`` at its position: the first-order
(direct plus indirect) effect of removing it, exact for a unit whose only path to the target is linear (a
last-layer neuron), an estimate elsewhere that ``check_by_ablation`` measures against the real effect.

A dictionary feature is spliced in without changing any value: the site becomes ``x + decode(f) − decode(f)``
with ``f`` a copy of the feature activations, so the gradient reaches each feature through its decoder direction
while the rest of the model (and every neuron's attribution) sees the unedited site.
"""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import torch

from analysis.activations import edited_site, neuron_reader, sae_reader, unit_activations
from analysis.causal import fork_at
from analysis.models import SubjectModel
from analysis.types import MLP, UnitId, UserError

if TYPE_CHECKING:
    from analysis.sae.model import SAE

Key = tuple[str, int]
"""(source, layer): one source's units at one layer, as ``analysis.activations.Reader.key``."""


@dataclass(frozen=True)
class Target:
    """What an attribution explains: the logit of ``token`` for the next token after ``position``, minus the logit
    of ``contrast`` when there is one (a logit difference)."""

    position: int
    token: int
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

def prompt_activations(subject: SubjectModel, token_ids: list[int], saes: tuple["SAE", ...] = ()
                       ) -> dict[Key, torch.Tensor]:
    """``{(source, layer): [T, n_units] float32}``: every neuron of every layer and every feature of ``saes`` on the
    prompt, from one forward pass."""
    readers = [neuron_reader(layer) for layer in range(subject.info.n_layers)] + [sae_reader(s) for s in saes]
    ids = torch.tensor([token_ids], dtype=torch.int64)
    acts = unit_activations(subject, ids, None, readers)
    return {k: v[0].cpu() for k, v in acts.items()}


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


# ---- the frozen model ----------------------------------------------------------------------------------------

_FREEZE_LOCK = threading.RLock()


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _frozen_norm(subject: SubjectModel):
    def hook(module, args, output):
        x = (args[0] if args else None)
        if x is None or not torch.is_tensor(output) or not output.requires_grad:
            return None
        wide = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
        xf, x0 = x.to(wide), x.detach().to(wide)
        eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 1e-6)))
        if isinstance(module, torch.nn.LayerNorm):
            centred, centred0 = xf - xf.mean(-1, keepdim=True), x0 - x0.mean(-1, keepdim=True)
            scale = (centred0.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            gain = module.weight if module.weight is not None else torch.ones_like(x0[0, 0])
        else:
            centred, centred0 = xf, x0
            scale = (x0.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            gain = subject._norm_gain(module)
        linear = gain.to(wide).detach() * (centred - centred0) / scale  # zero-valued, the frozen-denominator Jacobian
        return output.detach() + linear.to(output.dtype)
    return hook


def _frozen_attention(original):
    def attention(module, query, key, value, *args, **kwargs):
        fn = original or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query.detach(), key.detach(), value, *args, **kwargs)
    return attention


@contextmanager
def frozen(subject: SubjectModel) -> Iterator[None]:
    """Inside the block, gradients through ``subject`` see every attention pattern and norm denominator as a
    constant; values are unchanged. The attention function of the model's implementation is swapped process-wide
    for the block (values stay the same for any other model meanwhile) and every hook is removed on the way out."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(subject.model.config, "_attn_implementation", None) or "eager"
    with _FREEZE_LOCK, ExitStack() as stack:
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        had, before = impl in local, local.get(impl)
        original = None if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
        local[impl] = _frozen_attention(original)
        stack.callback(lambda: local.__setitem__(impl, before) if had else local.pop(impl, None))
        hook = _frozen_norm(subject)
        for module in subject.model.modules():
            if _is_norm(module):
                stack.callback(module.register_forward_hook(hook).remove)
        yield


# ---- what causes a prediction --------------------------------------------------------------------------------

@dataclass
class Traced:
    """One forward pass with every unit's activation differentiable: ``acts[key]`` is ``[T, n]`` in the graph
    (neurons: the out projection's input; features: their encoding of the site, for edges into them) and
    ``leaves[key]`` the tensor whose gradient is the unit's (the same for neurons; the spliced copy for features)."""

    logits: torch.Tensor
    """``[T, vocab]``."""
    acts: dict[Key, torch.Tensor] = field(default_factory=dict)
    leaves: dict[Key, torch.Tensor] = field(default_factory=dict)


@contextmanager
def _traced_units(subject: SubjectModel, saes: tuple["SAE", ...], traced: Traced) -> Iterator[None]:
    with ExitStack() as stack:
        emb = subject.model.get_input_embeddings()

        def needs_grad(_m, _a, out):
            return out.detach().requires_grad_(True)
        stack.callback(emb.register_forward_hook(needs_grad).remove)
        for layer in range(subject.info.n_layers):
            def keep(h, layer=layer):
                h.retain_grad()
                traced.acts[(MLP, layer)] = traced.leaves[(MLP, layer)] = h
                return h
            stack.enter_context(edited_site(subject, layer, "mlp_in", keep))
        for sae in saes:
            def splice(x, sae=sae):
                f = sae.encode(x.float())
                leaf = f.detach().requires_grad_(True)
                traced.acts[(sae.source, sae.layer)], traced.leaves[(sae.source, sae.layer)] = f, leaf
                dec = sae.decode(leaf)
                return x + (dec - dec.detach()).to(x.dtype)
            stack.enter_context(edited_site(subject, sae.layer, sae.site, splice))
        yield


def trace(subject: SubjectModel, token_ids: list[int], saes: tuple["SAE", ...] = ()) -> Traced:
    """The prompt through the frozen model with a graph (call inside ``frozen``)."""
    traced = Traced(logits=torch.empty(0))
    ids = torch.tensor([token_ids], dtype=torch.int64, device=subject.device)
    with _traced_units(subject, saes, traced), torch.inference_mode(False), torch.enable_grad():
        hidden = subject.base()(input_ids=ids, use_cache=False).last_hidden_state
        logits = subject.logits(hidden)[0]
        traced.logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    traced.acts = {k: v[0] for k, v in traced.acts.items()}
    return traced


@dataclass(frozen=True)
class Attribution:
    """Every unit's attribution to a target at every position."""

    target: Target
    value: float
    """The target's value on the clean prompt."""
    acts: dict[Key, torch.Tensor]
    """``[T, n]`` activations."""
    scores: dict[Key, torch.Tensor]
    """``[T, n]`` attributions: activation × gradient of the target in the frozen model."""

    def total_abs(self) -> float:
        return float(sum(s.abs().sum() for s in self.scores.values()))


def attribute(subject: SubjectModel, token_ids: list[int], target: Target, saes: tuple["SAE", ...] = ()
              ) -> Attribution:
    """One forward and one backward through the frozen model: every unit's attribution to ``target``."""
    check_target(subject, token_ids, target)
    with frozen(subject):
        traced = trace(subject, token_ids, saes)
        m = target.of(traced.logits[target.position])
        keys = list(traced.leaves)
        grads = torch.autograd.grad(m, [traced.leaves[k] for k in keys], allow_unused=True)
    acts, scores = {}, {}
    for k, g in zip(keys, grads):
        a = traced.leaves[k].detach()
        a = a[0] if a.dim() == 3 else a
        g = torch.zeros_like(a) if g is None else (g[0] if g.dim() == 3 else g)
        if not torch.isfinite(g).all():
            raise UserError("the gradients are not finite (reduced precision?): run the model in float32")
        acts[k], scores[k] = a.float().cpu(), (a.float() * g.float()).cpu()
    return Attribution(target, float(m.detach()), acts, scores)


def check_target(subject: SubjectModel, token_ids: list[int], target: Target) -> None:
    if not token_ids:
        raise UserError("the text is empty: give a prompt")
    if not 0 <= target.position < len(token_ids):
        raise UserError(f"position {target.position} is out of range: the prompt has {len(token_ids)} tokens "
                        f"(0 .. {len(token_ids) - 1})")
    vocab = subject.model.get_output_embeddings().weight.shape[0]
    for t in (target.token, target.contrast):
        if t is not None and not 0 <= t < vocab:
            raise UserError(f"token id {t} is not in the vocabulary (0 .. {vocab - 1})")


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
    changes nothing. A model
    whose cache cannot be cut back (a sliding window already full) runs every unit in one batch of
    ``len(units) + 1`` rows from the earliest layer involved (``fork_at``) instead."""
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


def _site_of(u: UnitAt, by_source: dict) -> tuple[int, str]:
    return u.unit.layer, "mlp_in" if u.unit.source == MLP else by_source[u.unit.source].site


def _zeroing(edits: list[tuple[int, UnitAt, int]], by_source: dict):
    """An edit of a site's ``[rows, T, width]`` that zeroes each (row, unit, position) of ``edits``."""
    def edit(h):
        h = h.clone()
        for row, u, t in edits:
            if u.unit.source == MLP:
                h[row, t, u.unit.index] = 0
            else:
                sae = by_source[u.unit.source]
                a = sae.encode(h[row, t].float())[u.unit.index]
                direction = (sae.W_dec[u.unit.index] / sae.input_scale).to(h.device, torch.float32)
                h[row, t] = (h[row, t].float() - a * direction).to(h.dtype)
        return h
    return edit


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
        sites: dict[tuple[int, str], list] = {}
        for row, (_i, u) in enumerate(group, start=1):
            sites.setdefault(_site_of(u, by_source), []).append((row, u, u.position - q))
        with ExitStack() as stack:
            for (layer, site), edits in sites.items():
                stack.enter_context(edited_site(subject, layer, site, _zeroing(edits, by_source)))
            hidden = subject.base()(input_ids=ids[:, q:].expand(n, -1), past_key_values=cache,
                                    use_cache=cache is not None).last_hidden_state[:, -1]
        values = target.of(subject.logits(hidden).float())
        deltas.update({i: float(values[row] - values[0]) for row, (i, _u) in enumerate(group, start=1)})
    return deltas


def _ablate_forked(subject: SubjectModel, ids: torch.Tensor, target: Target, live: list[tuple[int, UnitAt]],
                   by_source: dict) -> dict[int, float]:
    if not live:
        return {}
    sites: dict[tuple[int, str], list] = {}
    for row, (_i, u) in enumerate(live, start=1):
        sites.setdefault(_site_of(u, by_source), []).append((row, u, u.position))
    with ExitStack() as stack:
        stack.enter_context(fork_at(subject, min(layer for layer, _site in sites), len(live) + 1))
        for (layer, site), edits in sites.items():
            stack.enter_context(edited_site(subject, layer, site, _zeroing(edits, by_source)))
        hidden = subject.base()(input_ids=ids, use_cache=False).last_hidden_state[:, -1]
    values = target.of(subject.logits(hidden).float())
    return {i: float(values[row] - values[0]) for row, (i, _u) in enumerate(live, start=1)}


def spearman(xs: list[float], ys: list[float]) -> float | None:
    """Spearman's rank correlation (None for fewer than 3 pairs or a constant side)."""
    import scipy.stats

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(scipy.stats.spearmanr(xs, ys).statistic)


# ---- how they connect ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Edge:
    source: int
    """Index into the graph's nodes, or ``-1 - layer`` for that layer's "other" node."""
    target: int
    """Index into the nodes, or ``len(nodes)`` for the target."""
    weight: float


@dataclass(frozen=True)
class PromptGraph:
    """The top units as nodes, the target as the last node; an edge from an upstream unit i to a unit j is i's
    attribution to j's activation in the frozen model (to the target: its attribution), pruned per node to the
    edges that carry ``keep`` of its incoming absolute weight; each layer's "other" node carries what the nodes of
    that layer do not."""

    nodes: list[UnitAt]
    target: Target
    edges: list[Edge]

    def to_json(self) -> dict:
        return {"nodes": [{"unit": str(n.unit), "source": n.unit.source, "layer": n.unit.layer, "index": n.unit.index,
                           "position": n.position, "attribution": n.value, "activation": n.activation}
                          for n in self.nodes],
                "target": {"position": self.target.position, "token": self.target.token,
                           "contrast": self.target.contrast},
                "edges": [{"source": e.source, "target": e.target, "weight": e.weight} for e in self.edges]}


def _prune(edges: list[Edge], keep: float) -> list[Edge]:
    edges = sorted(edges, key=lambda e: -abs(e.weight))
    total = sum(abs(e.weight) for e in edges)
    out, acc = [], 0.0
    for e in edges:
        if total == 0 or acc >= keep * total:
            break
        out.append(e)
        acc += abs(e.weight)
    return out


def connect(subject: SubjectModel, token_ids: list[int], attribution: Attribution, nodes: list[UnitAt],
            saes: tuple["SAE", ...] = (), keep: float = 0.8) -> PromptGraph:
    """Edges between ``nodes`` (one backward per node through the frozen model) and from them to the target."""
    if len(nodes) > 50:
        raise UserError(f"a graph takes at most 50 units ({len(nodes)} given)")
    edges: list[Edge] = []
    with frozen(subject):
        traced = trace(subject, token_ids, saes)
        keys = list(traced.leaves)
        for j, nj in enumerate(nodes):
            own = (nj.unit.source, nj.unit.layer)
            earlier = [k for k in keys if k[1] <= nj.unit.layer and k != own]  # upstream or not: autograd says
            if not earlier:
                continue
            out = traced.acts[(nj.unit.source, nj.unit.layer)]
            out = out[0] if out.dim() == 3 else out
            grads = torch.autograd.grad(out[nj.position, nj.unit.index], [traced.leaves[k] for k in earlier],
                                        retain_graph=True, allow_unused=True)
            incoming, other = [], {}
            for k, g in zip(earlier, grads):
                if g is None:
                    continue
                a = traced.leaves[k].detach()
                contrib = ((a[0] if a.dim() == 3 else a) * (g[0] if g.dim() == 3 else g)).float()
                layer_total = float(contrib.sum())
                listed = 0.0
                for i, ni in enumerate(nodes):
                    if (ni.unit.source, ni.unit.layer) == k:
                        w = float(contrib[ni.position, ni.unit.index])
                        incoming.append(Edge(i, j, w))
                        listed += w
                other[k[1]] = other.get(k[1], 0.0) + layer_total - listed
            incoming += [Edge(-1 - layer, j, w) for layer, w in other.items() if w != 0]
            edges += _prune(incoming, keep)
    edges += _prune([Edge(i, len(nodes), n.value) for i, n in enumerate(nodes)], keep)
    return PromptGraph(nodes, attribution.target, edges)
