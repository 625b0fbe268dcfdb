"""How the top units connect: edges through the frozen model, pruned, with an "other" node per layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from analysis.models import SubjectModel
from analysis.types import UserError
from analysis.attribution.frozen import Attribution, frozen, trace
from analysis.attribution.units import Target, UnitAt

if TYPE_CHECKING:
    from analysis.sae.model import SAE

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
