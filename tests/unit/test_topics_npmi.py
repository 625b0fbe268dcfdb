"""Word-pool topics, the NPMI statistics: counts against brute force and hand formulas, saved and loaded."""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest

from analysis.topics import (ACTIVATION_SOURCE, Polarity, activation_ranking, count_cooccurrences, load_stats,
                             save_stats)
from analysis.types import MLP, UnitId
from analysis.words import is_pool_word

# ---------------------------------------------------------------- NPMI counts


def brute_counts(texts, window):
    """Window sets enumerated one by one (Palmetto's boolean sliding window)."""
    import re
    from collections import Counter

    single, pair, n_windows = Counter(), Counter(), 0
    for text in texts:
        words = re.findall(r"[a-z]+", text.lower())
        starts = range(max(1, len(words) - window + 1))
        for s in starts:
            ws = set(words[s : s + window])
            n_windows += 1
            single.update(ws)
            pair.update(frozenset(p) for p in itertools.combinations(sorted(ws), 2))
    return single, pair, n_windows


def test_counts_and_npmi_by_hand():
    texts = ["Apple banana cherry apple date", "banana, date!", "cherry"]
    stats = count_cooccurrences(texts, "tiny", window=3, min_count=1, progress=False)
    # doc 1 windows: {apple banana cherry} {banana cherry apple} {cherry apple date}; doc 2: {banana date};
    # doc 3: {cherry}
    assert stats.n_windows == 5
    assert stats.vocab == ("apple", "banana", "cherry", "date")
    assert [stats.freq(w) for w in stats.vocab] == [2, 2, 2, 2]
    assert dict(zip(stats.vocab, stats.window_counts.tolist())) == {"apple": 3, "banana": 3, "cherry": 4, "date": 2}
    assert stats.pair_count("apple", "banana") == 2
    assert stats.pair_count("banana", "apple") == 2
    assert stats.pair_count("apple", "date") == 1
    assert stats.pair_count("banana", "date") == 1
    assert stats.pair_count("cherry", "date") == 1
    m = stats.npmi_matrix(["apple", "banana", "date", "cherry"])
    p_ab, p_a, p_b = 2 / 5, 3 / 5, 3 / 5
    assert m[0, 1] == pytest.approx(math.log(p_ab / (p_a * p_b)) / -math.log(p_ab))
    p_ad, p_d = 1 / 5, 2 / 5
    assert m[2, 0] == pytest.approx(math.log(p_ad / (p_a * p_d)) / -math.log(p_ad))
    assert np.allclose(m, m.T) and np.all(np.diag(m) == 0)
    # a cut on pair counts turns rare pairs into "never together"
    assert stats.npmi_matrix(["apple", "date"], min_pair_count=2)[0, 1] == -1.0
    with pytest.raises(KeyError):
        stats.npmi_matrix(["apple", "zebra"])


def test_counts_match_brute_force_and_survive_save_load(tmp_path):
    rng = np.random.default_rng(3)
    words = [f"w{chr(97 + i)}x" for i in range(14)]
    words = ["".join(c for c in w if c.isalpha()) for w in words]
    texts = [" ".join(rng.choice(words, size=rng.integers(1, 40))) for _ in range(30)]
    stats = count_cooccurrences(texts, "rand", window=6, min_count=3, chunk_words=50, progress=False)
    single, pair, n_windows = brute_counts(texts, 6)
    assert stats.n_windows == n_windows
    freq = {w: sum(t.split().count(w) for t in texts) for w in set(words)}
    assert set(stats.vocab) == {w for w, c in freq.items() if c >= 3}
    for w in stats.vocab:
        assert stats.window_counts[stats.index(w)] == single[w]
    for a, b in itertools.combinations(stats.vocab, 2):
        assert stats.pair_count(a, b) == pair[frozenset((a, b))]
    path = save_stats(stats, tmp_path / "npmi" / "rand.npz")
    back = load_stats(path)
    assert (back.vocab, back.n_windows, back.window, back.min_count, back.corpus_id) == \
        (stats.vocab, stats.n_windows, 6, 3, "rand")
    np.testing.assert_array_equal(back.npmi_matrix(stats.vocab), stats.npmi_matrix(stats.vocab))


def test_cached_statistics_are_read_once_per_process_until_the_file_changes(tmp_path, monkeypatch):
    """A build asks for the same statistics for every layer: the file is read once, and again only once rewritten."""
    import analysis.topics.npmi as npmi
    from analysis.topics.types import NpmiConfig

    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(["apple pear plum fig apple pear kiwi lime"] * 20))
    config = NpmiConfig(corpora=(str(ref),), min_count=2)
    reads = []
    plain = npmi.load_stats
    monkeypatch.setattr(npmi, "load_stats", lambda path: reads.append(path) or plain(path))
    first, sid = npmi.cached_reference_stats(config, tmp_path, progress=False)  # counted and saved, not read
    again, sid2 = npmi.cached_reference_stats(config, tmp_path, progress=False)
    third, _ = npmi.cached_reference_stats(config, tmp_path, progress=False)
    assert len(reads) == 1 and third is again and sid == sid2 and again.vocab == first.vocab
    path = npmi.stats_path(config, tmp_path)
    os.utime(path, ns=(path.stat().st_mtime_ns + 10**9,) * 2)  # rewritten (same content)
    npmi.cached_reference_stats(config, tmp_path, progress=False)
    assert len(reads) == 2


def test_counting_refuses_one_shot_iterators():
    with pytest.raises(TypeError, match="re-iterable"):
        count_cooccurrences(iter(["a b c"]), "x", progress=False)


def test_content_vocabulary_keeps_every_count_of_its_words():
    """Counting only pool words changes no count of a pool word (windows still run over every word)."""
    texts = ["the guitar and the band played in paris", "a band of seven played music in the hall", "music"]
    full = count_cooccurrences(texts, "c", window=4, min_count=1, progress=False)
    content = count_cooccurrences(texts, "c", window=4, min_count=1, progress=False, keep=is_pool_word,
                                  vocabulary="content")
    assert set(content.vocab) == {"guitar", "band", "played", "paris", "music", "hall"}
    assert content.n_windows == full.n_windows and content.vocabulary == "content"
    words = list(content.vocab)
    np.testing.assert_array_equal(content.npmi_matrix(words), full.npmi_matrix(words))
    for a, b in itertools.combinations(words, 2):
        assert content.pair_count(a, b) == full.pair_count(a, b)


def test_smoothed_npmi_by_hand():
    """The reference code's smoothing: eps added to every p(a, b); a pair never seen then scores
    log(eps / (p(a) p(b))) / -log(eps) instead of -1."""
    texts = ["apple banana cherry apple date", "banana date", "cherry"]
    stats = count_cooccurrences(texts, "tiny", window=3, min_count=1, progress=False)
    eps = 1e-3
    m = stats.npmi_matrix(["apple", "banana", "date", "cherry"], eps=eps)
    n = 5  # windows, as in test_counts_and_npmi_by_hand
    p_ab, p_a, p_b = 2 / n + eps, 3 / n, 3 / n
    assert m[0, 1] == pytest.approx(math.log(p_ab / (p_a * p_b)) / -math.log(p_ab))
    # cherry and date share one window ({cherry apple date}); with min_pair_count 2 they count as never seen
    p_c, p_d = 4 / n, 2 / n
    unseen = stats.npmi_matrix(["cherry", "date"], min_pair_count=2, eps=eps)[0, 1]
    assert unseen == pytest.approx(math.log(eps / (p_c * p_d)) / -math.log(eps))
    assert stats.npmi_matrix(["cherry", "date"], min_pair_count=2)[0, 1] == -1.0  # eps 0: the limit, -1


def test_npmi_matrix_equals_the_formula_pair_by_pair():
    """Every entry of a pool's matrix (words in any order) against the definition computed from
    the scalar counts, for both treatments of unseen pairs and a pair-count cut; a pair in every window is 1."""
    rng = np.random.default_rng(3)
    words = ["alpha", "beta", "gamma", "delta", "omega", "kappa", "sigma", "theta"]
    texts = [" ".join(rng.choice(words[:6], size=int(rng.integers(3, 12)))) + " sigma theta" for _ in range(40)]
    texts += ["alpha beta gamma delta omega kappa"] * 3
    stats = count_cooccurrences(texts, "tiny", window=4, min_count=1, progress=False)
    n = stats.n_windows
    ask = ["kappa", "alpha", "theta", "omega", "sigma", "delta", "gamma", "beta"]
    for eps, min_pair in [(0.0, 1), (1e-12, 1), (1e-3, 3)]:
        m = stats.npmi_matrix(ask, min_pair_count=min_pair, eps=eps)
        for (i, a), (j, b) in itertools.product(enumerate(ask), repeat=2):
            together = stats.pair_count(a, b)
            together = together if together >= min_pair else 0
            p_ab, p_a, p_b = together / n + eps, stats.window_counts[stats.index(a)] / n, \
                stats.window_counts[stats.index(b)] / n
            if i == j:
                want = 0.0
            elif p_ab >= 1.0:
                want = 1.0
            elif p_ab == 0.0:
                want = -1.0
            else:
                want = max(-1.0, min(1.0, math.log(p_ab / (p_a * p_b)) / -math.log(p_ab)))
            assert m[i, j] == pytest.approx(want, abs=1e-12), (eps, min_pair, a, b)
    always = count_cooccurrences(["sigma theta", "theta sigma kappa"], "tiny", window=4, min_count=1, progress=False)
    assert always.npmi_matrix(["theta", "kappa", "sigma"])[2, 0] == 1.0  # together in every window


def test_activation_ranking_orders_by_mean():
    table = [(5, 0.1), (7, 2.5), (9, -1.0), (11, 0.9), (13, -3.0)]
    pos = activation_ranking(table, UnitId(MLP, 2, 8), polarity="pos", tau=3)
    neg = activation_ranking(table, UnitId(MLP, 2, 8), polarity=Polarity.NEG, tau=2)
    assert pos.token_ids == (7, 11, 5) and pos.scores == (2.5, 0.9, 0.1)
    assert neg.token_ids == (13, 9) and neg.polarity == Polarity.NEG
    assert pos.mode == ACTIVATION_SOURCE and pos.unit == UnitId(MLP, 2, 8)
