"""Neuron2Graph for units of one layer: split each unit's harvested top records, fit, evaluate, simulate; and a
stored graph's held-out predictions and nearest graphs, as a unit's page shows them (``graph_panel_data``).

The split is analysis/splits.py's ``n2g_train_test`` (of the first 20 top records, 0::4 + 1::4 train and 2::4 +
3::4 held out; ``N2GConfig.extra_records`` more from past them train too), so the "n2g" simulator is scored on
records its graph never saw.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

from analysis.n2g.evaluate import PRF, firing_metrics
from analysis.n2g.fit import ModelProber, N2GConfig, fit_graphs, token_lookup_predict
from analysis.n2g.graph import ANY, Graph, similar
from analysis.simulate import SimResult
from analysis.splits import n2g_train_test
from analysis.types import Explanation, UnitId


def _pairs(records) -> list[tuple[list[int], list[float]]]:
    return [(list(r.token_ids), list(r.activations)) for r in records]


@dataclass
class N2GResult:
    unit: UnitId
    max_activation: float
    graph: Graph
    firing: PRF
    non_firing: PRF
    baseline_firing: PRF
    baseline_non_firing: PRF
    test_window_ids: list[int]
    test_tokens: list[list[str]]
    test_real: list[list[float]]
    test_predicted: list[list[float]]
    params: dict
    seconds: float
    """This unit's share of the wall time of its batch."""

    def to_json(self) -> dict:
        def m(x: PRF) -> dict:
            return {"precision": x.precision, "recall": x.recall, "f1": x.f1}

        return {"neuron": self.unit.index, "layer": self.unit.layer, "max_activation": self.max_activation,
                "firing": m(self.firing), "non_firing": m(self.non_firing),
                "baseline_firing": m(self.baseline_firing), "baseline_non_firing": m(self.baseline_non_firing),
                "n_patterns": len(self.graph.patterns()),
                "records": [{"window_id": w, "tokens": t, "real": r, "predicted": p} for w, t, r, p in
                            zip(self.test_window_ids, self.test_tokens, self.test_real, self.test_predicted)]}


def held_out(rec, graph: Graph, extra_records: int = 0) -> tuple[list, list, list, list[list[float]]]:
    """(train, extra train, held-out records, the graph's prediction per held-out record and token, in neuron
    units) of a unit's records, split as its graph was fitted (``n2g_train_test``)."""
    train, extra, test = n2g_train_test(rec, extra_records)
    return train, extra, test, [graph.predict(list(r.token_ids)) for r in test]


@dataclass(frozen=True)
class GraphPanelData:
    """What a unit's page shows beside its stored graph (computed here; viewer/components/graph.py draws it)."""

    n_train: int
    """Top records the graph was fitted on, of the first ``analysis.splits.N2G_HEAD``."""
    n_extra: int
    """Train records past those (fitted on with no probes)."""
    test: list
    """The held-out ActivationRecords, in order."""
    predicted: list[list[float]]
    """The graph's prediction per held-out record and token (neuron units)."""
    similar: list[tuple[int, float]]
    """(unit index, Jaccard over trie paths) of the layer's graphs most like this one, best first, overlap > 0."""
    n_others: int
    """The other graphs of the layer it was compared with."""


def graph_panel_data(rec, patterns: list[tuple[list[int], float]], params: dict,
                     others: dict[int, list[tuple[list[int], float]]], n_similar: int = 10) -> GraphPanelData:
    """A unit's stored graph (``patterns``, fitted with ``params``) on its held-out records, and the graphs of its
    layer (``others``: unit index -> patterns; the unit itself is left out) that overlap it most."""
    train, extra, test, predicted = held_out(rec, graph_of(patterns), params.get("extra_records", 0))
    others = {u: p for u, p in others.items() if u != rec.unit.index}
    return GraphPanelData(len(train), len(extra), test, predicted, similar(patterns, others, n=n_similar),
                          len(others))


def evaluate(rec, graph: Graph, params: dict, seconds: float) -> N2GResult:
    """A unit's graph scored on its held-out top records, beside the token-lookup baseline fitted on the same
    train records (``params``' extra_records included)."""
    train, extra, test, predicted = held_out(rec, graph, params.get("extra_records", 0))
    train = train + extra
    real = [list(r.activations) for r in test]
    lookup = token_lookup_predict(_pairs(train))
    firing, non_firing = firing_metrics(real, predicted, rec.stats.max)
    b_firing, b_non_firing = firing_metrics(real, [lookup(list(r.token_ids)) for r in test], rec.stats.max)
    return N2GResult(unit=rec.unit, max_activation=rec.stats.max, graph=graph, firing=firing,
                     non_firing=non_firing, baseline_firing=b_firing, baseline_non_firing=b_non_firing,
                     test_window_ids=[r.window_id for r in test], test_tokens=[list(r.tokens) for r in test],
                     test_real=real, test_predicted=predicted, params=params, seconds=seconds)


def graph_of(patterns: list[tuple[list[int], float]]) -> Graph:
    graph = Graph()
    for pattern, value in patterns:
        graph.add(list(pattern), value)
    return graph


def mask_token_id(subject) -> int:
    """The token that stands for 'masked' in saliency: a single space (neutral, in every byte-level vocab), else
    the padding token."""
    ids = subject.tokenize(" ")
    return ids[0] if ids else subject.pad_id


def special_ids(tokenizer) -> list[int]:
    return sorted({int(i) for i in tokenizer.all_special_ids})


def fit_layer(subject, layer: int, neuron_records: list, config: N2GConfig = N2GConfig(), chunk: int = 32,
              prober: ModelProber | None = None, params: dict | None = None) -> Iterator[list[N2GResult]]:
    """Graphs for ``neuron_records`` (UnitRecords of one layer), yielded ``chunk`` units at a time; each
    result records ``params`` (default: the config's)."""
    prober = prober or ModelProber(subject, layer)
    mask_id, skip = mask_token_id(subject), special_ids(subject.tokenizer)
    for b in range(0, len(neuron_records), chunk):
        recs = neuron_records[b : b + chunk]
        t0 = time.perf_counter()
        splits = {rec.unit.index: n2g_train_test(rec, config.extra_records) for rec in recs}
        graphs = fit_graphs(prober, {u: _pairs(tr) for u, (tr, _ex, _te) in splits.items()}, mask_id,
                            {rec.unit.index: rec.stats.max for rec in recs}, config, skip,
                            {u: _pairs(ex) for u, (_tr, ex, _te) in splits.items()})
        per_unit = (time.perf_counter() - t0) / len(recs)
        yield [evaluate(rec, graphs[rec.unit.index], params or config.to_json(), per_unit) for rec in recs]


def describe(graph: Graph, vocab: dict[int, str], n: int = 3) -> str:
    """A one-line summary of a graph for lists: its strongest patterns in reading order ('…' = any token,
    '…3' = three of them)."""
    pats = sorted(graph.patterns(), key=lambda p: -p[1])
    shown = []
    for pattern, _value in pats:
        words: list[str] = []
        for t in reversed(pattern):  # reading order; a run of n 'any token' shows as '…n'
            if t != ANY:
                words.append(repr(vocab.get(t, f"#{t}")))
            elif words and words[-1].startswith("…"):
                words[-1] = f"…{int(words[-1][1:] or 1) + 1}"
            else:
                words.append("…")
        text = " ".join(words)
        if text not in shown:
            shown.append(text)
        if len(shown) == n:
            break
    more = f" (+{len(pats) - len(shown)} more)" if len(pats) > len(shown) else ""
    return f"Neuron2Graph, {len(pats)} patterns: " + "; ".join(shown) + more if pats else "Neuron2Graph: empty graph"


class N2GSimulator:
    """A graph as a simulator: its predictions on records, on the 0-10 scale of the explanation simulators."""

    name = "n2g"

    def __init__(self, graph: Graph, max_activation: float, params: dict):
        self.graph, self.max_activation, self.params = graph, max_activation, params

    def simulate(self, explanation: str, records: list) -> SimResult:
        m = self.max_activation if self.max_activation > 0 else 1.0
        sim = [[min(10.0, 10.0 * max(v, 0.0) / m) for v in self.graph.predict(list(r.token_ids))] for r in records]
        return SimResult(sim, self.name, self.params)


def graph_explanation(result: N2GResult, rec, tokenizer):
    """A fitted graph as an explanation (explainer 'n2g': a summary of its strongest patterns) and the graph as
    its simulator, scored on the same held-out records as every other explanation: (Explanation,
    ScoredSimulation)."""
    from analysis.evaluate import score_explanation

    names = {t: tokenizer.decode([t]) for p, _v in result.graph.patterns() for t in p if t >= 0}
    exp = Explanation(describe(result.graph, names), "n2g", result.params)
    sim = N2GSimulator(result.graph, rec.stats.max, result.params)
    return exp, score_explanation(sim, "", rec, "top-and-random")
