"""Neuron2Graph core: a planted neuron, trie matching with wildcards, P/R/F1 by hand, padding never counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.n2g.evaluate import firing_metrics, prf
from analysis.n2g.fit import N2GConfig, fit_graph, model_act_fn, prune, token_lookup_predict
from analysis.n2g.graph import ANY, Graph

A, B, C, MASK = 10, 11, 12, 0


def planted(seqs: list[list[int]]) -> list[float]:
    """Fires 5.0 on token B only when the token before it is A."""
    return [5.0 if len(s) >= 2 and s[-1] == B and s[-2] == A else 0.0 for s in seqs]


def _records(rng, n: int):
    out = []
    for _ in range(n):
        toks = [int(t) for t in rng.integers(20, 40, size=16)]
        for pos in rng.choice(range(1, 16), size=3, replace=False):
            toks[pos] = B
            if rng.random() < 0.6:
                toks[pos - 1] = A
        acts = [planted([toks[: i + 1]])[0] for i in range(len(toks))]
        out.append((toks, acts))
    return out


def test_planted_neuron_graph_is_exactly_the_rule_and_predicts_perfectly():
    rng = np.random.default_rng(0)
    train, test = _records(rng, 10), _records(rng, 10)
    assert any(max(a) > 0 for _, a in train) and any(0 in a and B in t for t, a in test)
    graph = fit_graph(planted, train, MASK)
    assert graph.patterns() == [([B, A], 5.0)]
    pred = [graph.predict(t) for t, _ in test]
    firing, non_firing = firing_metrics([a for _, a in test], pred, 5.0)
    assert firing.f1 == 1.0 and non_firing.f1 == 1.0
    # token-lookup fires on every B, with or without A: imperfect precision
    lookup = token_lookup_predict(train)
    base, _ = firing_metrics([a for _, a in test], [lookup(t) for t, _ in test], 5.0)
    assert base.recall == 1.0 and base.precision < 1.0


def test_prune_keeps_the_shortest_sufficient_context():
    ctx, act = prune(planted, [1, 2, A, B, 3], 3, N2GConfig())
    assert ctx == [A, B] and act == 5.0


def test_trie_matching_with_wildcards_and_depth():
    g = Graph()
    g.add([B, ANY, A], 3.0)  # B two after A
    g.add([B], 1.0)  # B alone, weakly
    g.add([C, A], 2.0)
    assert g.predict([A, 7, B]) == [0.0, 0.0, 3.0]  # the deeper, more specific match wins
    assert g.predict([7, 7, B]) == [0.0, 0.0, 1.0]
    assert g.predict([B]) == [1.0]  # no context before position 0: the root's own value
    assert g.predict([A, C, C]) == [0.0, 2.0, 0.0]
    assert g.predict([9, 9]) == [0.0, 0.0]


def test_prf_by_hand_and_no_nan():
    real = [True, True, False, False, True]
    pred = [True, False, True, False, False]
    m = prf(real, pred)  # tp=1 fp=1 fn=2
    assert (m.precision, m.recall) == (0.5, 1 / 3) and m.f1 == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    nothing = prf([True, False], [False, False])
    assert (nothing.precision, nothing.recall, nothing.f1) == (0.0, 0.0, 0.0)  # 0, not NaN
    firing, non_firing = firing_metrics([[4.0, 0.0, 1.0]], [[4.0, 3.0, 0.0]], 4.0)
    assert (firing.precision, firing.recall) == (0.5, 1.0)
    assert (non_firing.precision, non_firing.recall) == (1.0, 0.5)


def test_model_act_fn_reads_the_last_real_token(tiny_folders):
    from analysis.activations import mlp_activations
    from analysis.models import load_model

    subject = load_model(str(tiny_folders["llama"]))
    fn = model_act_fn(subject, layer=1, unit=5, batch_size=2)
    seqs = [[40, 41, 42, 43], [50, 51], [60, 61, 62]]  # different lengths: padded inside batches
    got = fn(seqs)
    for s, g in zip(seqs, got):
        alone = mlp_activations(subject, torch.tensor([s]), None, [1])[1][0, -1, 5].item()
        assert g == pytest.approx(alone, abs=1e-5)
