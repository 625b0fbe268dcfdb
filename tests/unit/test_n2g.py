"""Neuron2Graph core: a planted neuron, trie matching with wildcards, P/R/F1 by hand, padding never counted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.n2g.evaluate import firing_metrics, prf
from analysis.n2g.fit import (Answer, ModelProber, N2GConfig, Probe, fit_graphs, generalise, pack_rows,
                              token_lookup_predict)
from analysis.n2g.graph import ANY, Graph, contains_sequence, jaccard, paths, similar
from tests.helpers import assert_same_top

A, B, C, D, MASK = 10, 11, 12, 13, 0


def planted_rule(seq, before=(A,)) -> float:
    """Fires 5.0 on token B only when the token before it is one of ``before``."""
    return 5.0 if len(seq) >= 2 and seq[-1] == B and seq[-2] in before else 0.0


class PlantedProber:
    """A planted unit 0 instead of a model; its 'language model' always proposes the tokens of ``lm`` in order
    (log-probabilities -1, -2, ...), and every following token has log-probability -1."""

    def __init__(self, before=(A,), lm=()):
        self.before, self.lm, self.probes = before, list(lm), []

    def __call__(self, probes):
        self.probes += probes
        out = []
        for p in probes:
            acts = np.array([planted_rule(p.seq, self.before)])
            if not p.lm:
                out.append(Answer(acts))
                continue
            n = len(p.seq)
            k = min(p.topk, len(self.lm))
            top = np.array([self.lm[:k]] * n, dtype=np.int64).reshape(n, k)
            lps = np.array([[-1.0 - j for j in range(k)]] * n).reshape(n, k)
            out.append(Answer(acts, np.full(n, -1.0), top, lps))
        return out


def _records(rng, n: int, before=(A,), context=(A,)):
    out = []
    for _ in range(n):
        toks = [int(t) for t in rng.integers(20, 40, size=16)]
        for pos in rng.choice(range(1, 16), size=3, replace=False):
            toks[pos] = B
            if rng.random() < 0.6:
                toks[pos - 1] = int(rng.choice(context))
        acts = [planted_rule(toks[: i + 1], before) for i in range(len(toks))]
        out.append((toks, acts))
    return out


def test_planted_neuron_graph_is_exactly_the_rule_and_predicts_perfectly():
    rng = np.random.default_rng(0)
    train, test = _records(rng, 10), _records(rng, 10)
    assert any(max(a) > 0 for _, a in train) and any(0 in a and B in t for t, a in test)
    graph = fit_graphs(PlantedProber(), {0: train}, MASK, {0: 5.0}, N2GConfig(augment=False))[0]
    assert graph.patterns() == [([B, A], 5.0)]  # B alone also occurs without firing: the context is kept
    pred = [graph.predict(t) for t, _ in test]
    firing, non_firing = firing_metrics([a for _, a in test], pred, 5.0)
    assert firing.f1 == 1.0 and non_firing.f1 == 1.0
    # token-lookup fires on every B, with or without A: imperfect precision
    lookup = token_lookup_predict(train)
    base, _ = firing_metrics([a for _, a in test], [lookup(t) for t, _ in test], 5.0)
    assert base.recall == 1.0 and base.precision < 1.0


def test_augmentation_learns_substitutes_the_train_text_never_shows():
    """The unit fires on B after A or D; train text only has A before B. The LM proposes D and C for A's place:
    the graph must learn D (fires) and C (silent), and predict held-out text with D that it never saw."""
    rng = np.random.default_rng(1)
    train = _records(rng, 10, before=(A, D))
    test = _records(rng, 10, before=(A, D), context=(D,))
    prober = PlantedProber(before=(A, D), lm=[D, C, B])
    plain = fit_graphs(prober, {0: train}, MASK, {0: 5.0}, N2GConfig(augment=False))[0]
    graph = fit_graphs(prober, {0: train}, MASK, {0: 5.0}, N2GConfig(augment=True, substitutes=2))[0]
    pats = dict((tuple(p), v) for p, v in graph.patterns())
    assert pats[(B, A)] == 5.0 and pats[(B, D)] == 5.0 and pats[(B, C)] == 0.0
    assert pats[(D, A)] == 0.0 and pats[(C, A)] == 0.0  # root substitutes (D, C in B's place) do not fire
    real = [a for _, a in test]
    f_plain, _ = firing_metrics(real, [plain.predict(t) for t, _ in test], 5.0)
    f_aug, _ = firing_metrics(real, [graph.predict(t) for t, _ in test], 5.0)
    assert f_plain.recall == 0.0 and f_aug.f1 == 1.0
    # the substitutes were rescored with lm probes, and nothing after the activating token was ever sent
    assert any(p.lm and p.topk == 0 for p in prober.probes)


def two_rules(seq) -> float:
    """Fires 5.0 on B after A and 4.0 on C after D."""
    if len(seq) >= 2 and (seq[-2], seq[-1]) == (D, C):
        return 4.0
    return 5.0 if len(seq) >= 2 and (seq[-2], seq[-1]) == (A, B) else 0.0


class TwoRulesProber(PlantedProber):
    """``two_rules`` as unit 0; its language model proposes the tokens of ``lm``."""

    def __call__(self, probes):
        answers = super().__call__(probes)
        for p, a in zip(probes, answers):
            a.acts = np.array([two_rules(p.seq)])
        return answers


def test_every_firing_fits_the_tokens_below_each_records_max():
    """The unit fires 5.0 on B after A and 4.0 on C after D; every record's max is a B. Fitted on the max alone
    the graph never learns C; with ``every_firing`` it learns C after D (and C alone stays silent)."""
    train = [([30, A, B, 31, D, C, 32, C], [0, 0, 5.0, 0, 0, 4.0, 0, 0]),
             ([33, D, C, 34, A, B, C, 35], [0, 0, 4.0, 0, 0, 5.0, 0, 0])]
    config = N2GConfig(augment=False)
    only_max = fit_graphs(TwoRulesProber(), {0: train}, MASK, {0: 5.0}, config)[0]
    assert C not in only_max.roots
    graph = fit_graphs(TwoRulesProber(), {0: train}, MASK, {0: 5.0}, N2GConfig(augment=False, every_firing=2))[0]
    assert sorted(graph.patterns()) == [([B], 5.0), ([C, D], 4.0)]  # B always fires: its context was cut
    assert graph.predict([D, C, 36, C]) == [0.0, 4.0, 0.0, 0.0]


def test_extra_records_are_fitted_without_probes_and_judge_the_cuts():
    """Main records show only B after A; an extra record's max is C after D, and C after 34 is silent. The graph
    learns C after D from it with no probe (its window whole, cut by generalise on the train records); without
    extra records it never learns C. And generalise's cuts are judged on the extra records too."""
    main = [([30, A, B, 31], [0, 0, 5.0, 0])]
    extra = [([33, D, C, 34, C, 35], [0, 0, 4.0, 0, 0, 0])]
    config = N2GConfig(augment=True, substitutes=1)
    prober = TwoRulesProber(lm=[D])
    graph = fit_graphs(prober, {0: main}, MASK, {0: 5.0}, config, extra={0: extra})[0]
    # B's record augmented (D for A: silent; D for B: silent), C's record not
    assert sorted(graph.patterns()) == [([B], 5.0), ([B, D], 0.0), ([C, D], 4.0), ([D, A], 0.0)]
    assert not any(C in p.seq for p in prober.probes)  # the extra record was never probed (nor pruned, masked,
    assert any(B in p.seq for p in prober.probes)  # augmented), the main one was
    assert graph.predict([D, C, 36, C]) == [0.0, 4.0, 0.0, 0.0]
    without = fit_graphs(TwoRulesProber(lm=[D]), {0: main}, MASK, {0: 5.0}, config)[0]
    assert C not in without.roots
    # the cut is judged on the extra records too: a silent C in one keeps C's context, without it C is cut to [C]
    main, silent = [([33, D, C, 34], [0, 0, 4.0, 0])], [([35, C, 36], [0.0, 0.0, 0.0])]
    plain = N2GConfig(augment=False)
    assert fit_graphs(TwoRulesProber(), {0: main}, MASK, {0: 5.0}, plain)[0].patterns() == [([C], 4.0)]
    judged = fit_graphs(TwoRulesProber(), {0: main}, MASK, {0: 5.0}, plain, extra={0: silent})[0]
    assert judged.patterns() == [([C, D], 4.0)]


def test_generalise_cuts_context_that_train_negatives_do_not_need():
    toks = [[30, A, B, 31, 32], [33, 34, B, 35, A]]
    acts = [[0, 0, 5.0, 0, 0], [0, 0, 5.0, 0, 0]]  # B always fires
    assert generalise([B, A], 5.0, list(zip(toks, acts)), 2.5) == [B]
    acts[1][2] = 0.0  # B after 34 is silent: A is needed
    assert generalise([B, A], 5.0, list(zip(toks, acts)), 2.5) == [B, A]
    assert generalise([B, ANY, 30], 5.0, list(zip(toks, acts)), 2.5) == [B, ANY, 30]
    assert generalise([B, A], 1.0, list(zip(toks, acts)), 2.5) == [B, A]  # not firing: kept whole


def test_prune_keeps_the_shortest_sufficient_context():
    graph = fit_graphs(PlantedProber(), {0: [([1, 2, A, B, 3], [0, 0, 0, 5.0, 0])]}, MASK, {0: 5.0},
                       N2GConfig(augment=False, generalise=False))[0]
    assert graph.patterns() == [([B, A], 5.0)]


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


def test_pack_rows_shares_prefixes_and_respects_the_row_size():
    seqs = [(1, 2, 3), (1, 2, 4), (1, 2), (1, 2, 3), (5,), (1, 9, 9, 9, 9, 9, 9)]
    rows = pack_rows(seqs, row_tokens=5)
    for tokens, parents, paths in rows:
        assert len(tokens) <= 5 or len(paths) == 1  # only a lone long sequence overflows
        assert all(p < i for i, p in enumerate(parents))  # preorder: a node after its parent
        for j, path in paths.items():
            assert [tokens[n] for n in path] == list(seqs[j])
            assert [parents[n] for n in path] == [-1] + path[:-1]  # a path from a root
    assert sorted(j for _t, _p, paths in rows for j in paths) == list(range(len(seqs)))
    first = next(r for r in rows if 0 in r[2])
    assert first[2][0] == first[2][3] and len(first[0]) == 4  # 1 2 3 4: the prefix and the duplicate run once


@pytest.mark.parametrize("kind", ["llama", "gpt2", "neox", "gemma", "gemma-softcap", "llama-bos"])
def test_model_prober_equals_single_sequence_forward_passes(tiny_folders, tmp_path, kind):
    """Activations at the last token, next-token log-probabilities and top-k, for sequences that share prefixes
    (packed into rows with an ancestor mask) or not, several rows per batch and several batches, against plain HF
    forward passes of each sequence alone (with a BOS prefix, which every sequence of a row shares, for
    'llama-bos')."""
    from tests.helpers import tiny_model_folder

    from analysis.models import load_model

    folder = (tiny_model_folder(tmp_path / kind, "llama", bos=True) if kind == "llama-bos"
              else tiny_folders[kind.removesuffix("-softcap")])
    subject = load_model(str(folder))
    if kind == "gemma-softcap":  # a final logit soft-cap (Gemma 2's kind) that bends these logits
        subject.model.config.final_logit_softcapping = 1.0
    assert len(subject.bos_prefix) == (kind == "llama-bos")
    prober = ModelProber(subject, layer=1, token_budget=16, lm_token_budget=12, row_tokens=8)
    seqs = [(40, 41, 42, 43), (50, 51), (60, 61, 62), (70,), (40, 41, 99, 43), (40, 41, 42, 7), (40, 41),
            (40, 41, 42, 43, 44, 45, 46, 47, 48, 49)]
    # every position's prediction, and (lm_head at a few positions only) positions 1 and the last
    rows = [(1, len(s) - 1) if len(s) > 1 else (0,) for s in seqs]
    probes = ([Probe(s) for s in seqs] + [Probe(s, lm=True, topk=3) for s in seqs]
              + [Probe(s, lm=True, topk=2, rows=r) for s, r in zip(seqs, rows)])
    answers = prober(probes)
    assert prober.n_tokens[False] < sum(map(len, seqs))  # the shared prefixes ran once
    nb = len(subject.bos_prefix)
    captured = {}
    hook = subject.out_proj(1).register_forward_pre_hook(lambda _m, a: captured.__setitem__("x", a[0]))
    try:
        for i, s in enumerate(seqs):
            with torch.inference_mode():
                logits = subject.model(input_ids=torch.tensor([subject.bos_prefix + list(s)])).logits[0]
            act = captured["x"][0, -1].numpy()
            for a in (answers[i], answers[len(seqs) + i]):
                np.testing.assert_allclose(a.acts, act, atol=1e-5, rtol=1e-4)
            lm = answers[len(seqs) + i]
            lsm = torch.log_softmax(logits, -1).numpy()
            if not nb:  # no BOS: nothing predicts token 0
                assert np.isnan(lm.logprobs[0]) and (lm.top_ids[0] == -1).all()
            vocab = np.arange(lsm.shape[1])
            for t in range(1 - nb, len(s)):
                assert lm.logprobs[t] == pytest.approx(lsm[nb + t - 1, s[t]], abs=1e-4)
                # the top 3 (their ids where no near-tie could reorder them)
                assert_same_top(lm.top_ids[t], lm.top_logprobs[t], vocab, lsm[nb + t - 1], rtol=0, atol=1e-4)
            few = answers[2 * len(seqs) + i]
            np.testing.assert_allclose(few.acts, act, atol=1e-5, rtol=1e-4)
            asked = [t for t in rows[i] if t >= 1 - nb]
            for t in range(len(s)):
                if t in asked:
                    assert few.logprobs[t] == pytest.approx(lsm[nb + t - 1, s[t]], abs=1e-4)
                    assert_same_top(few.top_ids[t], few.top_logprobs[t], vocab, lsm[nb + t - 1], rtol=0, atol=1e-4)
                else:  # not asked: nothing computed
                    assert np.isnan(few.logprobs[t]) and (few.top_ids[t] == -1).all()
    finally:
        hook.remove()


def test_graphs_fitted_through_packed_rows_equal_one_sequence_per_row(tiny_folders):
    """Packing is only a way to run the probes: the same records give the same graphs (patterns and values) as
    with every probe run as its own row."""
    from analysis.models import load_model
    from analysis.n2g.pipeline import mask_token_id

    subject = load_model(str(tiny_folders["llama"]))
    rng = np.random.default_rng(4)
    records = {}
    for unit in (0, 3, 7):
        recs = []
        for _ in range(4):
            toks = [int(t) for t in rng.integers(5, 200, size=20)]
            acts = rng.random(20).tolist()
            recs.append((toks, acts))
        records[unit] = recs
    maxes = {u: 1.0 for u in records}
    graphs = [fit_graphs(ModelProber(subject, 1, row_tokens=rows), records, mask_token_id(subject), maxes,
                         N2GConfig(candidates=4, importance=0.0, keep=0.0))
              for rows in (1, 256)]
    one, packed = ({u: sorted(g.patterns()) for u, g in gs.items()} for gs in graphs)
    assert any(len(p) > 3 for p in one.values())
    for u in records:
        assert [p for p, _v in one[u]] == [p for p, _v in packed[u]]
        np.testing.assert_allclose([v for _p, v in one[u]], [v for _p, v in packed[u]], rtol=1e-5, atol=1e-5)


def test_sequence_search_and_graph_overlap_by_hand():
    pat = [B, A, ANY, C]  # reads: C, any, A, B
    assert contains_sequence(pat, [{A}, {B}]) and contains_sequence(pat, [{B}])
    assert not contains_sequence(pat, [{C}, {A}])  # not contiguous: a wildcard sits between them
    assert not contains_sequence(pat, [{B}, {A}])  # order matters
    assert contains_sequence(pat, [{99, A}, {B}])  # a position accepts any of its variants
    assert paths([(pat, 1.0)]) == {(B,), (B, A), (B, A, ANY), (B, A, ANY, C)}
    g1, g2, g3 = [([B, A], 1.0)], [([B, C], 1.0)], [([D], 1.0)]
    assert jaccard(paths(g1), paths(g2)) == pytest.approx(1 / 3)  # {B} shared of {B, BA, BC}
    assert similar(g1, {1: g2, 2: g3, 3: g1}) == [(3, 1.0), (1, pytest.approx(1 / 3))]


def test_graph_html_keeps_tokens_out_of_markup():
    from viewer.components.graph import graph_html

    evil = {1: "</script><img src=x onerror=alert(1)>", 2: "<b>zq-bold</b>"}
    empty = graph_html([], {}, 1.0)
    page = graph_html([([1, 2], 1.0), ([1, ANY, ANY, 2], 0.7)], evil, 1.0)
    assert page.count("<script") == empty.count("<script") and "<img" not in page and "<b>zq" not in page
    assert "\\u003cimg src=x onerror=alert(1)\\u003e" in page  # the token travels as escaped JSON
    assert "2 any" in page and "cdn.jsdelivr" not in page


def test_describe_reads_patterns_in_text_order():
    from analysis.n2g.pipeline import describe

    g = Graph()
    g.add([B, ANY, ANY, ANY, A], 3.0)
    g.add([B, C, ANY, A], 2.0)
    g.add([D], 1.0)
    names = {A: "A", B: "B", C: "x", D: "z"}
    assert describe(g, names) == "Neuron2Graph, 3 patterns: 'A' …3 'B'; 'A' … 'x' 'B'; 'z'"
    assert describe(g, names, n=1) == "Neuron2Graph, 3 patterns: 'A' …3 'B' (+2 more)"
    assert describe(Graph(), names) == "Neuron2Graph: empty graph"
