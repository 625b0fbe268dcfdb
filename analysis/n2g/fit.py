"""Fit a Neuron2Graph graph from a unit's train records, given a function that measures the unit.

``act_fn(sequences) -> activations``: the unit's activation at the LAST token of each token-id sequence. It can
be a real model (``model_act_fn``), a planted rule, or anything else: the algorithm only needs this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from analysis.n2g.graph import ANY, Graph

ActFn = Callable[[list[list[int]]], list[float]]


@dataclass(frozen=True)
class N2GConfig:
    keep: float = 0.5
    """Pruning keeps the shortest preceding context whose activation is at least this fraction of the full one."""
    importance: float = 0.25
    """A context token is important when masking it drops the activation by at least this fraction."""
    max_context: int = 24
    """Look back at most this many tokens from the activating token."""
    max_important: int = 3
    """Keep at most this many context tokens (the most important ones); the rest become ANY, so a pattern
    generalises beyond the exact text it was fitted on."""


def prune(act_fn: ActFn, tokens: list[int], pos: int, config: N2GConfig) -> tuple[list[int], float]:
    """The shortest context ending at ``pos`` that keeps ``config.keep`` of the activation, and its activation."""
    lo = max(0, pos - config.max_context)
    starts = list(range(pos, lo - 1, -1))  # shortest first
    acts = act_fn([tokens[s : pos + 1] for s in starts])
    full = acts[-1]
    for s, a in zip(starts, acts):
        if a >= config.keep * full:
            return tokens[s : pos + 1], a
    return tokens[lo : pos + 1], full


def saliency(act_fn: ActFn, context: list[int], activation: float, mask_id: int) -> list[float]:
    """For each context token before the last: the fraction of the activation lost when it is masked."""
    if len(context) < 2 or activation <= 0:
        return []
    masked = [context[:i] + [mask_id] + context[i + 1 :] for i in range(len(context) - 1)]
    acts = act_fn(masked)
    return [(activation - a) / activation for a in acts]


def fit_graph(act_fn: ActFn, records: list[tuple[list[int], list[float]]], mask_id: int,
              config: N2GConfig = N2GConfig()) -> Graph:
    """``records``: (token ids, activations) of real tokens only (no padding)."""
    graph = Graph()
    for tokens, acts in records:
        if not tokens:
            continue
        pos = max(range(len(acts)), key=lambda i: acts[i])
        if acts[pos] <= 0:
            continue
        context, activation = prune(act_fn, tokens, pos, config)
        if activation <= 0:
            continue
        imp = saliency(act_fn, context, activation, mask_id)
        ranked = sorted((i for i in range(len(imp)) if imp[i] >= config.importance), key=lambda i: -imp[i])
        keep = set(ranked[: config.max_important])
        back = [context[i] if i in keep else ANY for i in range(len(context) - 2, -1, -1)]
        while back and back[-1] == ANY:  # unimportant far context adds nothing
            back.pop()
        # the pattern stands for the example: it keeps the example's own activation (in neuron units, never
        # rescaled), which the pruned context reproduces to at least config.keep
        graph.add([context[-1]] + back, acts[pos])
    return graph


def token_lookup_predict(records: list[tuple[list[int], list[float]]]) -> Callable[[list[int]], list[float]]:
    """The paper's baseline: each token's largest activation seen in the train records (0 if never seen)."""
    best: dict[int, float] = {}
    for tokens, acts in records:
        for t, a in zip(tokens, acts):
            best[t] = max(best.get(t, a), a)
    return lambda tokens: [max(best.get(t, 0.0), 0.0) for t in tokens]


def model_act_fn(subject, layer: int, unit: int, batch_size: int = 64) -> ActFn:
    """The unit's activation at the last token of each sequence, from the model (right padding, masked)."""
    from analysis.activations import mlp_activations

    bos = [subject.tokenizer.bos_token_id] if subject.info.prepend_bos else []
    pad = subject.tokenizer.pad_token_id or 0

    def act_fn(seqs: list[list[int]]) -> list[float]:
        out: list[float] = []
        for b in range(0, len(seqs), batch_size):
            chunk = [bos + s for s in seqs[b : b + batch_size]]
            T = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), T), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, s in enumerate(chunk):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            acts = mlp_activations(subject, ids, mask, [layer])[layer][:, :, unit]
            last = torch.tensor([len(s) - 1 for s in chunk])
            out += acts[torch.arange(len(chunk)), last].tolist()
        return out

    return act_fn
