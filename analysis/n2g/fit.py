"""Fit Neuron2Graph graphs for many units of one layer at once.

Each train record is fitted by a small generator (``_fit_record``) that reads like the paper: prune, saliency,
augment, patterns. Whenever it needs the model it *yields* the probes (token sequences) it wants measured and
receives their answers. ``fit_graphs`` runs the generators of every record of every unit in lockstep and answers
all their probes together: identical sequences are measured once, and one forward pass yields every unit of the
layer, so the cost is shared across units. The prober is the only thing that knows about the model
(``ModelProber``); tests plant a rule instead.

Everything works on token ids; padding never reaches a measurement (sequences are right-padded and each is read
at its own last real token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Iterator, Sequence

import numpy as np
import torch

from analysis.n2g.config import N2GConfig
from analysis.n2g.evaluate import FIRING_FRACTION
from analysis.n2g.graph import ANY, Graph


@dataclass(frozen=True)
class Probe:
    """A token sequence to run; the unit is read at its last token."""

    seq: tuple[int, ...]
    lm: bool = False
    """Also return the language model's log-probabilities (runs the whole model)."""
    topk: int = 0
    """With ``lm``: also the ``topk`` most likely tokens at each position asked."""
    rows: tuple[int, ...] | None = None
    """With ``lm``: the positions t whose prediction is wanted (log p(seq[t] | seq[:t]) and the top-k there);
    None: every position. The lm_head runs at these positions only (it is ~20 % of a small model's cost per
    position); the answer holds NaN / -1 elsewhere."""


@dataclass
class Answer:
    acts: np.ndarray
    """``[n_units]`` activations of every unit of the layer at the last token."""
    logprobs: np.ndarray | None = None
    """``[len(seq)]``: log p(seq[t] | seq[:t]); NaN where there is nothing to condition on (t = 0 without BOS)
    or the position was not asked."""
    top_ids: np.ndarray | None = None
    """``[len(seq), topk]``: the most likely tokens at position t given seq[:t] (-1 where undefined or not asked)."""
    top_logprobs: np.ndarray | None = None


Prober = Callable[[list[Probe]], list[Answer]]
Pattern = tuple[list[int], float]


def _prune_stages(longest: int) -> list[list[int]]:
    """Context lengths to try, shortest first, grouped into rounds (a round stops the search if any length works)."""
    lengths = [n for n in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48) if n < longest] + [longest]
    return [lengths[:4]] + [lengths[i : i + 2] for i in range(4, len(lengths), 2)]


def _pattern(context: Sequence[int], keep: set[int]) -> list[int]:
    """Activating token (the last of ``context``) first, then the context backwards, ANY where not kept."""
    back = [context[i] if i in keep else ANY for i in range(len(context) - 2, -1, -1)]
    while back and back[-1] == ANY:  # unimportant far context adds nothing
        back.pop()
    return [context[-1]] + back


def _fit_record(tokens: list[int], pos: int, activation: float, unit: int, mask_id: int, skip_ids: frozenset[int],
                config: N2GConfig) -> Generator[list[Probe], list[Answer], list[Pattern]]:
    """The record's patterns: its pruned context with its important tokens, then its substitutes'."""
    lo = max(0, pos - config.max_context)

    # 1. prune: the shortest context ending at pos that keeps `keep` of the record's activation
    context: list[int] = []
    pruned = 0.0
    for lengths in _prune_stages(pos - lo + 1):
        answers = yield [Probe(tuple(tokens[pos + 1 - n : pos + 1])) for n in lengths]
        for n, a in zip(lengths, answers):
            context, pruned = tokens[pos + 1 - n : pos + 1], float(a.acts[unit])
            if pruned >= config.keep * activation:
                break
        else:
            continue
        break
    if pruned <= 0:
        return []

    # 2. saliency: the fraction of the activation lost when each context token is masked
    masked = [Probe(tuple(context[:i] + [mask_id] + context[i + 1 :])) for i in range(len(context) - 1)]
    answers = (yield masked) if masked else []
    importance = [(pruned - float(a.acts[unit])) / pruned for a in answers]
    ranked = sorted((i for i, v in enumerate(importance) if v >= config.importance), key=lambda i: -importance[i])
    keep = set(ranked[: config.max_important])
    # the pattern stands for the record: it keeps the record's own activation (neuron units, never rescaled)
    patterns: list[Pattern] = [(_pattern(context, keep), activation)]
    if not config.augment:
        return patterns

    # 3. augment: the LM's candidates for the activating token and each important token (conditioned on the
    # record's text before them); a context token's candidates are rescored by how likely the rest of the pruned
    # context is after them (the activating token has nothing after it: its candidates keep their own rank).
    # Asked after saliency, so the LM's predictions are computed at those few positions only.
    start = pos + 1 - len(context)
    root = len(context) - 1
    rows = {i: start - lo + i for i in sorted(keep) + [root]}
    (cand,) = yield [Probe(tuple(tokens[lo : pos + 1]), lm=True, topk=config.candidates, rows=tuple(rows.values()))]
    options: dict[int, list[tuple[int, float]]] = {}
    for i, row in rows.items():
        options[i] = [(int(x), float(lp)) for x, lp in zip(cand.top_ids[row], cand.top_logprobs[row])
                      if x >= 0 and x != context[i] and int(x) not in skip_ids]
    options[root] = options[root][: config.substitutes]
    subs = [(i, x, lp) for i, xs in options.items() for x, lp in xs]
    if not subs:
        return patterns
    # rescoring only where there are more candidates than substitutes to keep (else it cannot change the choice)
    rescore = {i for i, xs in options.items() if i != root and len(xs) > config.substitutes}
    answers = yield [Probe(tuple(context[:i] + [x] + context[i + 1 :]), lm=i in rescore,
                           rows=tuple(range(i + 1, len(context))) if i in rescore else None) for i, x, _ in subs]
    scored: dict[int, list[tuple[float, int, float]]] = {}
    for (i, x, lp), a in zip(subs, answers):
        follow = float(np.sum(a.logprobs[i + 1 :])) if i in rescore else 0.0
        scored.setdefault(i, []).append((lp + follow, x, float(a.acts[unit])))
    for i, ranked_subs in scored.items():
        for _score, x, act in sorted(ranked_subs, reverse=True)[: config.substitutes]:
            swapped = context[:i] + [x] + context[i + 1 :]
            # in the record's units: the substitute's share of the pruned activation, applied to the record's
            # (capped at the record's: an unnatural substitute must not outshout the real example)
            patterns.append((_pattern(swapped, keep), activation * min(max(act / pruned, 0.0), 1.0)))
    return patterns


def generalise(pattern: list[int], value: float, records: list[tuple[list[int], list[float]]],
               threshold: float) -> list[int]:
    """The truncation of a firing pattern (ending at a real token) that predicts the train records best: the
    highest F1 over the positions of its activating token (firing = activation >= ``threshold``), the shortest
    on ties. Patterns that do not fire are kept whole: they are exceptions (a substitute that silences the unit)."""
    if value < threshold:
        return pattern
    at_root = [(tokens, t, acts[t] >= threshold) for tokens, acts in records for t in range(len(tokens))
               if tokens[t] == pattern[0]]
    n_firing = sum(f for _tok, _t, f in at_root)
    best, best_f1 = pattern, -1.0
    for end in [d + 1 for d in range(len(pattern)) if pattern[d] != ANY]:
        cut = pattern[:end]
        hits = [f for tokens, t, f in at_root if _matches(tokens, t, cut)]
        tp = sum(hits)
        f1 = 2 * tp / (len(hits) + n_firing) if hits or n_firing else 1.0
        if f1 > best_f1:
            best, best_f1 = cut, f1
    return best


def _matches(tokens: list[int], t: int, pattern: list[int]) -> bool:
    if t + 1 < len(pattern):
        return False
    return all(key == ANY or tokens[t - d] == key for d, key in enumerate(pattern))


def fit_graphs(prober: Prober, records: dict[int, list[tuple[list[int], list[float]]]], mask_id: int,
               max_activation: dict[int, float], config: N2GConfig = N2GConfig(),
               skip_ids: Sequence[int] = (), extra: dict[int, list[tuple[list[int], list[float]]]] | None = None
               ) -> dict[int, Graph]:
    """One graph per unit from its train ``records`` ((token ids, activations) of real tokens, no padding): each
    record's max is fitted, and up to ``config.every_firing`` more of its firing tokens. ``extra``: more train
    records per unit, fitted at their max with no probe: the window up to it (``max_context`` tokens back) whole,
    cut by ``generalise`` (``config.extra_records``).
    ``max_activation``: each unit's max, for the firing threshold (``FIRING_FRACTION`` x max) that ``generalise``
    uses, judged on all of a unit's train records."""
    graphs = {unit: Graph() for unit in records}
    skip = frozenset(skip_ids)
    extra = extra or {}
    judged = {unit: recs + extra.get(unit, []) for unit, recs in records.items()}
    active: list[tuple[int, Generator, list[Probe]]] = []

    def add(unit: int, patterns: list[Pattern]) -> None:
        """A record's patterns: its own first, then its substitutes (same positions)."""
        threshold = FIRING_FRACTION * max_activation[unit]
        end = None
        if config.generalise and patterns:
            end = len(generalise(*patterns[0], judged[unit], threshold))
        for pattern, value in patterns:
            # substitutes are cut where the record's pattern is: they never occur in the train text, so the
            # train records cannot judge them; context the record does not need does not matter for them
            graphs[unit].add(pattern[:end] if value >= threshold else pattern, value)

    def step(unit: int, gen: Generator, answers: list[Answer] | None) -> None:
        try:
            active.append((unit, gen, gen.send(answers)))
        except StopIteration as done:
            add(unit, done.value)

    for unit, recs in records.items():
        threshold = FIRING_FRACTION * max_activation[unit]
        seen: set[tuple[int, ...]] = set()  # an extra token after the same context as one fitted is not refitted
        for tokens, acts in recs:
            if not tokens:
                continue
            order = np.argsort(-np.asarray(acts), kind="stable")
            more = [int(t) for t in order[1:] if acts[t] >= threshold][: config.every_firing]
            for pos in [int(order[0])] + more:
                key = tuple(tokens[max(0, pos - config.max_context) : pos + 1])
                if acts[pos] > 0 and (pos == order[0] or key not in seen):
                    seen.add(key)
                    step(unit, _fit_record(list(tokens), pos, float(acts[pos]), unit, mask_id, skip, config), None)
        for tokens, acts in extra.get(unit, []):
            if tokens and max(acts) > 0:  # no probe: its window up to its max, every token kept, cut by generalise
                pos = int(np.argmax(acts))
                context = list(tokens[max(0, pos - config.max_context) : pos + 1])
                add(unit, [(_pattern(context, set(range(len(context) - 1))), float(acts[pos]))])
    while active:
        batch, active = active, []
        unique = list(dict.fromkeys(p for _u, _g, probes in batch for p in probes))
        answered = dict(zip(unique, prober(unique)))
        for unit, gen, probes in batch:
            step(unit, gen, [answered[p] for p in probes])
    return graphs


def token_lookup_predict(records: list[tuple[list[int], list[float]]]) -> Callable[[list[int]], list[float]]:
    """The paper's baseline: each token's largest activation seen in the train records (0 if never seen)."""
    best: dict[int, float] = {}
    for tokens, acts in records:
        for t, a in zip(tokens, acts):
            best[t] = max(best.get(t, a), a)
    return lambda tokens: [max(best.get(t, 0.0), 0.0) for t in tokens]


Row = tuple[list[int], list[int], dict[int, list[int]]]
"""A packed row: (tokens, each node's parent index or -1, {sequence index: its path's node indices})."""


def pack_rows(seqs: Sequence[tuple[int, ...]], row_tokens: int) -> list[Row]:
    """Sequences packed into rows that compute each shared prefix once: a row is a forest of token nodes in
    preorder (a node after its parent), every sequence a path from a root. Returns per row (tokens, parent index
    or -1, {sequence index: its path's node indices}). A row holds at most ``row_tokens`` nodes unless one
    sequence alone is longer. Lexicographic order is the tries' preorder, and a sequence shares the longest prefix
    it shares with anything earlier with the sequence just before it."""
    rows: list[Row] = []
    tokens: list[int] = []
    parents: list[int] = []
    paths: dict[int, list[int]] = {}
    prev: tuple[int, ...] = ()
    path: list[int] = []
    for i in sorted(range(len(seqs)), key=lambda i: seqs[i]):
        s = seqs[i]
        shared = 0
        while shared < min(len(s), len(prev)) and s[shared] == prev[shared]:
            shared += 1
        if tokens and len(tokens) + len(s) - shared > row_tokens:
            rows.append((tokens, parents, paths))
            tokens, parents, paths, shared = [], [], {}, 0
        path = path[:shared]
        for t in s[shared:]:
            parents.append(path[-1] if path else -1)
            path.append(len(tokens))
            tokens.append(t)
        paths[i], prev = list(path), s
    if tokens:
        rows.append((tokens, parents, paths))
    return rows


class ModelProber:
    """Answers probes with the subject model. Probes that share a prefix (a record's masked and substituted
    variants share everything before the changed token; every probe shares the BOS prefix) are packed into rows
    where that prefix runs once: each token attends to its own sequence's earlier tokens only (a 4D attention mask
    of ancestors, positions = depth), so every probe reads as if run alone. Rows are batched by a token budget.
    Plain probes stop the forward pass at the reader's site; ``lm`` probes run the whole model for
    log-probabilities. The reader says which units are read (a layer's neurons by default, or a dictionary's)."""

    def __init__(self, subject, layer: int, token_budget: int = 4096, lm_token_budget: int = 1024, reader=None,
                 row_tokens: int = 256):
        from analysis.activations import neuron_reader

        subject.check_layer(layer)
        self.subject, self.layer = subject, layer
        self.reader = reader or neuron_reader(layer)
        self.budgets = {False: token_budget, True: lm_token_budget}
        self.row_tokens = row_tokens
        self.n_prefix = len(subject.bos_prefix)
        self.n_tokens = {False: 0, True: 0}
        """Tokens run so far (shared prefixes counted once): layer-only probes (False) and whole-model (True)."""

    def __call__(self, probes: list[Probe]) -> list[Answer]:
        out: list[Answer | None] = [None] * len(probes)
        prefix = tuple(self.subject.bos_prefix)
        for lm in (False, True):
            which = [i for i, p in enumerate(probes) if p.lm == lm]
            mine = [probes[i] for i in which]
            rows = pack_rows([prefix + probes[i].seq for i in which], min(self.row_tokens, self.budgets[lm]))
            rows.sort(key=lambda r: len(r[0]))
            b = 0
            while b < len(rows):
                e = b + 1  # grow the batch while (rows x longest row) fits the budget
                while e < len(rows) and (e + 1 - b) * len(rows[e][0]) <= self.budgets[lm]:
                    e += 1
                for j, answer in self._run(rows[b:e], mine, lm):
                    out[which[j]] = answer
                b = e
        return out  # type: ignore[return-value]

    def _masks(self, sees: np.ndarray, depth: np.ndarray, dtype: torch.dtype, dev) -> torch.Tensor | dict:
        """The additive ``[B, 1, L, L]`` mask of ``sees`` (a custom 4D mask is used as given, so a sliding window is
        applied here: keys at most ``window - 1`` positions back; a model with both kinds of layers gets both
        masks by layer type)."""
        def additive(allowed: np.ndarray) -> torch.Tensor:
            blocked = torch.from_numpy(~allowed[:, None])
            return torch.zeros(blocked.shape, dtype=dtype).masked_fill_(blocked, torch.finfo(dtype).min).to(dev)

        config = self.subject.model.config
        window = getattr(config, "sliding_window", None)
        if not window or depth.max() < window:
            return additive(sees)
        windowed = additive(sees & (depth[:, :, None] - depth[:, None, :] < window))
        types = set(getattr(config, "layer_types", None) or [])
        if types - {"sliding_attention"}:
            return {"full_attention": additive(sees), "sliding_attention": windowed}
        return windowed

    @torch.inference_mode()
    def _run(self, rows: list[Row], probes: list[Probe], lm: bool) -> Iterator[tuple[int, Answer]]:
        """Answers for the probes of ``rows`` (``pack_rows`` of ``probes``' prefixed sequences), by probe index."""
        from analysis.activations import _StopForward, site_hooks

        dev, dtype = self.subject.device, next(self.subject.model.parameters()).dtype
        B, L = len(rows), max(len(r[0]) for r in rows)
        ids = np.full((B, L), self.subject.pad_id, dtype=np.int64)
        depth = np.zeros((B, L), dtype=np.int64)
        sees = np.zeros((B, L, L), dtype=bool)
        sees[:, np.arange(L), np.arange(L)] = True  # padding sees itself only (no empty softmax)
        for b, (tokens, parents, _paths) in enumerate(rows):
            ids[b, : len(tokens)] = tokens
            for i, parent in enumerate(parents):
                if parent >= 0:
                    sees[b, i] |= sees[b, parent]
                    depth[b, i] = depth[b, parent] + 1
            self.n_tokens[lm] += int((depth[b, : len(tokens)] >= self.n_prefix).sum())
        mask = self._masks(sees, depth, dtype, dev)
        ids, pos = torch.from_numpy(ids).to(dev), torch.from_numpy(depth).to(dev)
        site = (self.reader.layer, self.reader.site)
        with site_hooks(self.subject, [site], stop_when_done=not lm) as captured:
            hidden = None
            try:
                hidden = self.subject.base()(input_ids=ids, attention_mask=mask, position_ids=pos,
                                             use_cache=False).last_hidden_state
            except _StopForward:
                pass
        where = [(b, j, node_path) for b, (_t, _p, paths) in enumerate(rows) for j, node_path in paths.items()]
        at_b = torch.tensor([b for b, _j, _n in where], device=dev)
        at_last = torch.tensor([n[-1] for _b, _j, n in where], device=dev)
        acts = self.reader.units(captured[site][at_b, at_last]).cpu().numpy()
        if not lm:
            for k, (_b, j, _n) in enumerate(where):
                yield j, Answer(acts[k])
            return
        # the positions each probe asks for (0 has a prediction with a BOS prefix only); seq[t] is predicted at
        # the node of seq'[nb + t - 1] (seq' = prefix + seq); all of them through the lm_head at once
        nb = self.n_prefix
        first = max(1 - nb, 0)
        asked = [[t for t in (range(len(probes[j].seq)) if probes[j].rows is None else probes[j].rows) if t >= first]
                 for _b, j, _n in where]
        at_b = torch.tensor([b for (b, _j, _n), ts in zip(where, asked) for _t in ts], dtype=torch.long, device=dev)
        at_node = torch.tensor([node_path[nb + t - 1] for (_b, _j, node_path), ts in zip(where, asked) for t in ts],
                               dtype=torch.long, device=dev)
        lsm_all = torch.log_softmax(self.subject.logits(hidden[at_b, at_node]).float(), dim=-1)
        target_all = torch.tensor([probes[j].seq[t] for (_b, j, _n), ts in zip(where, asked) for t in ts],
                                  dtype=torch.long, device=dev)
        lp_all = lsm_all.gather(1, target_all[:, None])[:, 0].cpu().numpy()
        topk = max(probes[j].topk for _b, j, _n in where)
        if topk:
            top_v, top_t = (x.cpu().numpy() for x in lsm_all.topk(topk, dim=-1))
        o = 0
        for k, ((_b, j, _n), ts) in enumerate(zip(where, asked)):
            p = probes[j]
            n, here = len(p.seq), slice(o, o + len(ts))
            o += len(ts)
            lp = np.full(n, np.nan, dtype=np.float32)
            lp[ts] = lp_all[here]
            top_ids = top_lp = None
            if p.topk:
                top_ids = np.full((n, p.topk), -1, dtype=np.int64)
                top_lp = np.full((n, p.topk), -np.inf, dtype=np.float32)
                top_ids[ts], top_lp[ts] = top_t[here, : p.topk], top_v[here, : p.topk]
            yield j, Answer(acts[k], lp, top_ids, top_lp)
