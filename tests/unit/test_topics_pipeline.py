"""Word-pool topics: every stage against an independent computation (hand formulas, hooks on the full model,
brute force, HiGHS), never against its own output."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
import math

import numpy as np
import pytest
import torch

from analysis.topics import (ACTIVATION_SOURCE, Polarity, ProjectionMode, TokenRanking, TopicConfig,
                             activation_ranking, build_pool, count_cooccurrences, find_stars, load_stats,
                             normalise_token, project_rankings, projection_logits, random_topic_scores, save_stats,
                             solve_bnb, solve_greedy, solve_milp, topic_score, topics_for_units,
                             topics_from_ranking)
from analysis.words import STOP_WORDS, is_pool_word
from analysis.types import MLP, UnitId

# ---------------------------------------------------------------- helpers (independent routes)


@pytest.fixture(scope="module")
def tiny_models(tiny_folders):
    from analysis.models import load_model

    return {kind: load_model(str(folder)) for kind, folder in tiny_folders.items()}


def hand_final_logits(subject, x: torch.Tensor) -> torch.Tensor:
    """Final norm written out from its formula and the config's epsilon, then the unembedding matrix."""
    cfg = subject.model.config
    base = subject.base()
    x = x.double()
    if subject.info.architecture in ("gpt2", "gpt_neox"):
        ln = base.ln_f if hasattr(base, "ln_f") else base.final_layer_norm
        eps = getattr(cfg, "layer_norm_epsilon", None) or cfg.layer_norm_eps
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps) * ln.weight.double() + ln.bias.double()
    else:
        gain = base.norm.weight.double()
        if subject.info.architecture.startswith("gemma"):
            gain = 1.0 + gain
        y = x / torch.sqrt((x**2).mean(-1, keepdim=True) + cfg.rms_norm_eps) * gain
    return y @ subject.model.get_output_embeddings().weight.double().T


def neuron_vectors(subject, layer: int, neurons) -> torch.Tensor:
    """w_out rows plus the output projection's bias (the reference's ``linear(x, w, b)`` on a one-hot)."""
    proj = subject.out_proj(layer)
    v = subject.w_out(layer)[list(neurons)].detach().clone()
    if getattr(proj, "bias", None) is not None:
        v = v + proj.bias.detach()
    return v


def _replace_hidden(out, h):
    if isinstance(out, tuple):
        return (h,) + tuple(out[1:])
    return h


def hook_route_logits(subject, layer: int, vectors: torch.Tensor, where: str) -> torch.Tensor:
    """Run the *whole* model on B one-token inputs, overwriting the residual stream with ``vectors``:
    where='after' replaces block ``layer``'s output, 'before' replaces its input. Returns model logits."""
    block = subject.blocks()[layer]
    B = len(vectors)
    h = vectors[:, None, :].to(torch.float32)

    def post(_m, _args, out):
        return _replace_hidden(out, h)

    def pre(_m, args, kwargs):
        if args:
            return (h,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    handle = (block.register_forward_hook(post) if where == "after"
              else block.register_forward_pre_hook(pre, with_kwargs=True))
    try:
        with torch.no_grad():
            logits = subject.model(input_ids=torch.zeros((B, 1), dtype=torch.long), use_cache=False).logits[:, 0]
    finally:
        handle.remove()
    cap = getattr(subject.model.config, "final_logit_softcapping", None)
    return logits.double(), cap


def _softcap(x, cap):
    return x if cap is None else torch.tanh(x / cap) * cap


# ---------------------------------------------------------------- projection


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma", "neox"])
def test_hi_i_matches_hand_final_norm_and_unembedding(tiny_models, kind):
    subject = tiny_models[kind]
    neurons = [0, 5, 17, subject.info.d_mlp - 1]
    ours = projection_logits(subject, 1, "hi-i", neurons).double()
    with torch.no_grad():
        expected = hand_final_logits(subject, neuron_vectors(subject, 1, neurons))
    assert ours.shape == (len(neurons), subject.model.get_output_embeddings().weight.shape[0])
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma", "neox"])
def test_hi_c_matches_full_model_with_residual_replaced(tiny_models, kind):
    subject = tiny_models[kind]
    neurons = [1, 2, 30, 47]
    ours = projection_logits(subject, 0, ProjectionMode.HI_C, neurons, batch_size=3).double()
    with torch.no_grad():
        expected, cap = hook_route_logits(subject, 0, neuron_vectors(subject, 0, neurons), where="after")
    torch.testing.assert_close(_softcap(ours, cap), expected, rtol=1e-4, atol=1e-4)
    # the last layer has no remaining blocks: Hi-C is Hi-I there
    last = subject.info.n_layers - 1
    torch.testing.assert_close(projection_logits(subject, last, "hi-c", neurons),
                               projection_logits(subject, last, "hi-i", neurons))


@pytest.mark.parametrize("kind", ["gpt2", "llama", "gemma"])
def test_lo_modes_match_hook_routes(tiny_models, kind):
    subject = tiny_models[kind]
    dims = [0, 3, 31]
    onehots = torch.eye(32)[dims]
    with torch.no_grad():
        expected_c, cap = hook_route_logits(subject, 1, onehots, where="before")
    ours_c = projection_logits(subject, 1, "lo-c", dims).double()
    torch.testing.assert_close(_softcap(ours_c, cap), expected_c, rtol=1e-4, atol=1e-4)

    # lo-i: block 1 alone, read at its output, then the final norm and unembedding by hand
    block = subject.blocks()[1]
    seen = {}

    def grab(_m, _a, out):
        seen["h"] = (out[0] if isinstance(out, tuple) else out)[:, 0].detach().clone()

    handle = block.register_forward_hook(grab)
    try:
        hook_route_logits(subject, 1, onehots, where="before")
    finally:
        handle.remove()
    with torch.no_grad():
        expected_i = hand_final_logits(subject, seen["h"])
    torch.testing.assert_close(projection_logits(subject, 1, "lo-i", dims).double(), expected_i, rtol=1e-4, atol=1e-4)


def test_rankings_are_the_extremes_of_independent_logits(tiny_models):
    subject = tiny_models["llama"]
    neurons = [4, 9]
    with torch.no_grad():
        logits = hand_final_logits(subject, neuron_vectors(subject, 2, neurons)).numpy()
    rankings = project_rankings(subject, 2, "hi-i", neurons, tau=20, batch_size=1)
    assert [(r.unit.index, r.polarity) for r in rankings] == [(4, Polarity.POS), (4, Polarity.NEG),
                                                        (9, Polarity.POS), (9, Polarity.NEG)]
    for r in rankings:
        row = logits[neurons.index(r.unit.index)]
        order = np.argsort(-row if r.polarity == Polarity.POS else row, kind="stable")[:20]
        assert r.mode == "hi-i" and r.unit == UnitId(MLP, 2, r.unit.index) and len(r.token_ids) == 20
        np.testing.assert_allclose(r.scores, row[order], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(row[list(r.token_ids)], row[order], rtol=1e-4, atol=1e-4)


def test_projection_rejects_bad_units(tiny_models):
    from analysis.types import UserError

    subject = tiny_models["gpt2"]
    with pytest.raises(UserError, match="neuron 999"):
        projection_logits(subject, 0, "hi-i", [999])
    with pytest.raises(UserError, match="residual dimension 32"):
        projection_logits(subject, 0, "lo-c", [32])
    with pytest.raises(UserError):
        projection_logits(subject, 7, "hi-i", [0])


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


# ---------------------------------------------------------------- word pool


class FakeTokenizer:
    """decode([id]) of a fixed token list (with byte-level / sentencepiece markers and punctuation)."""

    def __init__(self, tokens):
        self.tokens = tokens

    def decode(self, ids):
        return "".join(self.tokens[i] for i in ids)


def test_normalise_and_filter_tokens():
    assert normalise_token(" Paris") == "paris"
    assert normalise_token("ĠMusic") == "music"
    assert normalise_token("▁Guitar ") == "guitar"
    assert normalise_token("dog") == "dog"
    assert is_pool_word("guitar") and not is_pool_word("the") and not is_pool_word("ox")
    assert not is_pool_word("b2b") and not is_pool_word("café") and not is_pool_word("")
    assert 170 <= len(STOP_WORDS) <= 320 and {"the", "and", "which", "would"} <= STOP_WORDS


def test_pool_keeps_rank_order_and_corpus_words():
    stats = count_cooccurrences(["music guitar guitar band band band the the the paris paris"] * 3, "c",
                                window=4, min_count=2, progress=False)
    tokens = [" Guitar", "Ġguitar", " the", "ox", " 1905", "▁Band", " zebra", " music", ",", " Paris"]
    ranking = TokenRanking("hi-i", UnitId(MLP, 0, 0), Polarity.POS, tuple(range(len(tokens))), tuple(range(len(tokens))))
    pool = build_pool(ranking, FakeTokenizer(tokens), stats)
    assert pool.words == ("guitar", "band", "music", "paris")
    assert pool.token_ids == (0, 5, 7, 9)
    assert pool.n_tokens == len(tokens)
    # the extra frequency cut: music occurs 3 times, paris 6, guitar 6, band 9
    assert build_pool(ranking, FakeTokenizer(tokens), stats, min_word_count=4).words == ("guitar", "band", "paris")


def test_pool_says_what_it_left_out_and_why():
    stats = count_cooccurrences(["music guitar band paris seven"] * 3, "c", window=4, min_count=2, progress=False)
    tokens = [" Guitar", "Ġguitar", " the", "ox", " 1905", "▁Band", " zebra", " music", ",", " Paris", " seven",
              " Seven", "ĠBand"]
    ranking = TokenRanking("hi-i", UnitId(MLP, 0, 0), Polarity.POS, tuple(range(len(tokens))), tuple(range(len(tokens))))
    pool = build_pool(ranking, FakeTokenizer(tokens), stats)
    assert pool.words == ("guitar", "band", "music", "paris")
    assert dict(pool.dropped) == {"not a word": 2, "under 3 letters": 1, "stop word": 1, "number word": 2,
                                  "not in the reference corpus": 1, "repeated": 2}
    assert sum(n for _, n in pool.dropped) + len(pool.words) == len(tokens)


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


# ---------------------------------------------------------------- stars


def planted(n=30, groups=((0, 12), (12, 22)), inside=0.5, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    m = rng.uniform(-noise, noise, size=(n, n))
    for a, b in groups:
        m[a:b, a:b] = inside + rng.uniform(-0.1, 0.1, size=(b - a, b - a))
    m = np.triu(m, 1)
    m = m + m.T
    return m


def test_stars_find_planted_groups_disjoint_and_capped():
    m = planted()
    stars = find_stars(m, k=10, theta_l=0.1)
    assert [sorted(s.indices) for s in stars] == [list(range(0, 12)), list(range(12, 22))]
    for s in stars:
        assert s.indices[-1] == s.center
        w = m[s.center, list(s.indices[:-1])]
        assert np.all(np.diff(w) <= 0)  # neighbours by decreasing edge weight
        assert s.mean_edge == pytest.approx(w.mean())
    # cap: a star of at most 11 words keeps the centre's 10 strongest neighbours
    capped = find_stars(m, k=10, kappa_u=11)[0]
    assert len(capped.indices) == 11
    c = capped.center
    strongest = set(np.argsort(-np.where(np.arange(30) == c, -9, m[c]))[:10].tolist())
    assert set(capped.indices[:-1]) == strongest
    # a group with fewer than k - 1 neighbours per word gives no star
    assert find_stars(planted(groups=((0, 8),)), k=10) == []


def test_star_rules_on_a_hand_graph():
    # words 0..3 form a triangle-plus-one; word 4 has one weak edge; k = 3 needs 2 neighbours
    m = np.full((5, 5), -1.0)
    for a, b, v in [(0, 1, 0.5), (0, 2, 0.4), (1, 2, 0.3), (2, 3, 0.2), (1, 3, 0.15), (3, 4, 0.12)]:
        m[a, b] = m[b, a] = v
    np.fill_diagonal(m, 0)
    stars = find_stars(m, k=3, theta_l=0.1)
    # word 4 (1 edge) is dropped; means: 0 -> .45, 1 -> .3167, 2 -> .3, 3 -> .175 (edge to 4 removed)
    assert stars[0].center == 0 and stars[0].indices == (1, 2, 0)
    assert len(stars) == 1  # word 3's remaining neighbours (1, 2) are used
    assert find_stars(m, k=3, theta_l=0.45) == []


# ---------------------------------------------------------------- exact solving


def brute_best(w, k):
    return max(sum(w[i, j] for i, j in itertools.combinations(c, 2)) for c in itertools.combinations(range(len(w)), k))


def random_sym(rng, n, kind):
    if kind == "normal":
        m = rng.normal(size=(n, n))
    elif kind == "npmi":
        m = rng.uniform(-0.2, 0.5, size=(n, n))
        m[rng.random((n, n)) < 0.25] = -1.0
    else:
        m = rng.integers(-2, 3, size=(n, n)).astype(float)  # many ties
    m = np.triu(m, 1)
    return m + m.T


def test_bnb_equals_brute_force_on_small_graphs():
    rng = np.random.default_rng(0)
    for trial in range(150):
        n = int(rng.integers(3, 13))
        k = int(rng.integers(2, n + 1))
        w = random_sym(rng, n, ["normal", "npmi", "ties"][trial % 3])
        best = brute_best(w, k)
        for start in (True, False):
            res = solve_bnb(w, k, heuristic_start=start)
            assert res.stats.method == "bnb"
            assert res.optimal and len(set(res.indices)) == k
            assert res.weight_sum == pytest.approx(best, abs=1e-9)
            assert res.weight_sum == pytest.approx(sum(w[i, j] for i, j in itertools.combinations(res.indices, 2)))
        greedy = solve_greedy(w, k)
        assert len(set(greedy.indices)) == k and greedy.weight_sum <= best + 1e-9


def test_bnb_equals_highs_on_star_sized_graphs():
    rng = np.random.default_rng(7)
    for n, k, kind in [(16, 10, "npmi"), (20, 10, "normal")]:
        w = random_sym(rng, n, kind)
        ours = solve_bnb(w, k, heuristic_start=False)
        highs = solve_milp(w, k, tight=True, time_limit_s=120)
        assert ours.optimal and highs.optimal
        assert ours.weight_sum == pytest.approx(highs.weight_sum, abs=1e-6)
        assert solve_greedy(w, k).weight_sum <= ours.weight_sum + 1e-9
    # the reference's exact program (no tightening) on a small case
    w = random_sym(rng, 12, "npmi")
    assert solve_milp(w, 6).weight_sum == pytest.approx(brute_best(w, 6), abs=1e-6)


def test_time_limit_returns_a_valid_non_optimal_set():
    rng = np.random.default_rng(1)
    w = random_sym(rng, 32, "normal")
    for start in (True, False):
        res = solve_bnb(w, 10, time_limit_s=0.0, heuristic_start=start)
        assert res.optimal is False
        assert len(set(res.indices)) == 10 and all(0 <= i < 32 for i in res.indices)
        assert res.weight_sum == pytest.approx(sum(w[i, j] for i, j in itertools.combinations(res.indices, 2)))
        assert res.score == pytest.approx(res.weight_sum / 45)
    highs = solve_milp(w, 10, time_limit_s=0.01)
    assert highs.optimal is False and len(set(highs.indices)) == 10


def test_fewer_vertices_than_k_gives_an_empty_result():
    w = np.ones((4, 4))
    for res in (solve_bnb(w, 5), solve_greedy(w, 5), solve_milp(w, 5)):
        assert res.indices == () and res.weight_sum == 0.0 and math.isnan(res.score)
    whole = solve_bnb(w, 4)
    assert whole.indices == (0, 1, 2, 3) and whole.optimal and whole.weight_sum == 6.0


# ---------------------------------------------------------------- pipeline


TOPIC_A = ["guitar", "drums", "bass", "album", "concert", "singer", "melody", "chorus", "rhythm", "piano"]
TOPIC_B = ["goalkeeper", "striker", "league", "match", "referee", "stadium", "penalty", "coach", "season", "tackle"]
FILLER = ["river", "bread", "window", "yellow", "engine", "garden", "silver", "market", "winter", "doctor",
          "planet", "pencil"]


@pytest.fixture(scope="module")
def topic_corpus():
    rng = np.random.default_rng(11)
    docs = []
    for d in range(120):
        topic = TOPIC_A if d % 2 else TOPIC_B
        words = []
        for _ in range(6):  # sentences: topic words close together, filler between
            words += list(rng.choice(topic, size=4, replace=False)) + list(rng.choice(FILLER, size=8))
        docs.append(" ".join(words))
    return count_cooccurrences(docs, "planted", window=10, min_count=3, progress=False)


def _ranking(words, polarity=Polarity.POS):
    tokens = [" " + w.capitalize() for w in words]
    return FakeTokenizer(tokens), TokenRanking("hi-i", UnitId(MLP, 3, 42), polarity, tuple(range(len(tokens))),
                                               tuple(float(-i) for i in range(len(tokens))))


def test_pipeline_recovers_planted_topics(topic_corpus):
    words = [w for pair in itertools.zip_longest(TOPIC_A, TOPIC_B, FILLER) for w in pair if w] + ["the", "of"]
    tok, ranking = _ranking(words)
    result = topics_from_ranking(ranking, tok, topic_corpus, TopicConfig(k=10, theta_l=0.05))
    assert result.reason is None and (result.unit, result.mode) == (UnitId(MLP, 3, 42), "hi-i")
    assert "the" not in result.pool.words and len(result.pool.words) == len(TOPIC_A + TOPIC_B + FILLER)
    assert len(result.topics) == 2
    found = sorted(set(t.words) <= set(TOPIC_A) or set(t.words) <= set(TOPIC_B) for t in result.topics)
    assert found == [True, True]
    for t in result.topics:
        star = result.stars[t.star_index]
        assert len(t.words) == 10 and set(t.words) <= set(star.words) and t.optimal
        assert t.score == pytest.approx(topic_score(t.words, topic_corpus))
        # optimal within its star: brute force over the star's words
        idx = [star.words.index(w) for w in t.words]
        assert t.score * 45 == pytest.approx(brute_best(star.npmi, 10), abs=1e-9) or len(star.words) > 14
        assert sum(star.npmi[i, j] for i, j in itertools.combinations(idx, 2)) == pytest.approx(t.score * 45)
    assert [t.score for t in result.topics] == sorted((t.score for t in result.topics), reverse=True)
    rand = random_topic_scores(result.pool.words, topic_corpus, k=10, n_draws=50, seed=0)
    assert rand.shape == (50,) and np.all((rand >= -1) & (rand <= 1))
    rng = np.random.default_rng(0)  # the same draws, scored one by one as topics are
    for d in range(50):
        draw = [result.pool.words[i] for i in rng.choice(len(result.pool.words), size=10, replace=False)]
        assert rand[d] == pytest.approx(topic_score(draw, topic_corpus), abs=1e-12)
    assert result.topics[-1].score > rand.max()


def test_pipeline_explains_empty_results(topic_corpus):
    tok, ranking = _ranking(TOPIC_A[:6] + ["the", "and"])
    small = topics_from_ranking(ranking, tok, topic_corpus)
    assert small.topics == () and "fewer than k = 10" in small.reason and len(small.pool.words) == 6
    tok, ranking = _ranking(FILLER)
    none = topics_from_ranking(ranking, tok, topic_corpus, TopicConfig(k=10, theta_l=0.3))
    assert none.topics == () and none.stars == () and "no star" in none.reason
    assert random_topic_scores(TOPIC_A[:3], topic_corpus, k=10).shape == (0,)


def test_topics_for_units_on_a_tiny_model(tiny_models):
    subject = tiny_models["gpt2"]
    vocab = [subject.tokenizer.decode([i]).strip().lower() for i in range(len(subject.tokenizer))]
    words = sorted({w for w in vocab if is_pool_word(w)})
    assert len(words) >= 5
    rng = np.random.default_rng(0)
    stats = count_cooccurrences([" ".join(rng.choice(words, 30)) for _ in range(50)], "tiny", min_count=1,
                                progress=False)
    out = topics_for_units(subject, 1, [0, 3], "hi-c", stats, TopicConfig(k=3, tau=400, theta_l=-1.0),
                           polarities=["neg"])
    assert [(r.unit.index, r.polarity, r.mode) for r in out] == [(0, Polarity.NEG, "hi-c"), (3, Polarity.NEG, "hi-c")]
    for r in out:
        assert set(r.pool.words) == set(words)  # tau covers the whole vocabulary
        assert r.topics and all(len(t.words) == 3 and t.optimal for t in r.topics)


def test_embedded_model_topics(embedded_smollm2):
    """One real end-to-end run: SmolLM2 hi-i, the Lee corpus statistics (small and fast to count)."""
    from analysis.corpus import load_corpus

    corpus = load_corpus("lee-background")
    stats = count_cooccurrences([d.text for d in corpus.documents], corpus.info.corpus_id, min_count=3,
                                progress=False)
    out = topics_for_units(embedded_smollm2, 29, [0, 1], "hi-i", stats, TopicConfig(tau=900))
    assert len(out) == 4
    for r in out:
        assert len(r.pool.words) > 10 and all(is_pool_word(w) for w in r.pool.words)
        for t in r.topics:
            assert len(t.words) == 10 and t.optimal and -1 <= t.score <= 1
            assert t.score == pytest.approx(topic_score(t.words, stats, eps=TopicConfig().eps))


def test_cli_topics_json_is_checkable_resumes_and_shows(tmp_path, monkeypatch, capsys):
    """On a real harvest of a tiny model (whole-word vocabulary) with a tiny reference corpus: every stored topic
    is the brute-force optimum of its star (recomputed from the JSON's NPMI matrix), its score is its mean pairwise
    NPMI; a second run computes nothing; the neuron page's topics tab and Search show them."""
    import itertools
    import json

    from analysis.__main__ import main
    from helpers import TINY_TEXT, tiny_model_folder

    model = str(tiny_model_folder(tmp_path / "words", "llama", vocab_size=700))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"title": f"d{i}", "text": " ".join(TINY_TEXT[i % 4:] + TINY_TEXT[:i % 4])})
                            + "\n" for i in range(24)))
    db = tmp_path / "t.duckdb"
    assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "1",
                 "--seq-len", "24", "--quiet"]) == 0
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TINY_TEXT * 40))
    args = ["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-5", "--k", "3",
            "--tau", "700", "--corpus", str(ref), "--min-count", "2", "--mode", "hi-c,hi-i,activation,lo-c"]
    assert main(args + ["--json"]) == 0
    out = json.loads(capsys.readouterr().out)["results"]
    assert {r["mode"] for r in out} == {"hi-c", "hi-i", "activation", "lo-c"} and len(out) == 4 * 6 * 2
    solved = 0
    for r in out:
        assert (r["topics"] == []) == (r["reason"] is not None)
        for t in r["topics"]:
            star = r["stars"][t["star"]]
            w = np.array(star["npmi"])
            idx = [star["words"].index(x) for x in t["words"]]
            assert t["score"] == pytest.approx(np.mean([w[a, b] for a, b in itertools.combinations(idx, 2)]))
            best = max(sum(w[a, b] for a, b in itertools.combinations(c, 2))
                       for c in itertools.combinations(range(len(star["words"])), 3))
            assert t["score"] * 3 == pytest.approx(best) and t["optimal"]
            # each word's mean NPMI with the other two (stored in place of the star's matrix)
            assert t["contrib"] == pytest.approx([(w[i, idx].sum() - w[i, i]) / 2 for i in idx], abs=1e-6)
            assert all(x.isalpha() and len(x) >= 3 for x in t["words"])
            solved += 1
    assert solved > 0
    assert main(args) == 0
    assert "topics: 48 unit-polarities" in capsys.readouterr().err
    # stars are stored without their matrices (the JSON's come from the statistics); a row stored before that
    # (matrix kept, no contributions) reads its contributions from the star's matrix
    import duckdb

    con = duckdb.connect(str(db))
    assert con.execute("SELECT count(*) FROM topic_stars WHERE npmi IS NOT NULL").fetchone()[0] == 0
    r = next(r for r in out if r["topics"] and r["mode"] == "hi-c")
    t = r["topics"][0]
    star = r["stars"][t["star"]]
    where = f"unit = {r['neuron']} AND mode = 'hi-c' AND polarity = '{r['polarity']}'"
    con.execute(f"UPDATE topic_stars SET npmi = ? WHERE {where} AND star = {t['star']}",
                [[x for row in star["npmi"] for x in row]])
    con.execute(f"UPDATE topics SET contrib = NULL WHERE {where}")
    con.close()
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        model_id = s.con.execute("SELECT model_id FROM topic_sets LIMIT 1").fetchone()[0]
        old = next(ts for ts in s.topics.sets(model_id, UnitId(MLP, 1, r["neuron"]), "hi-c")
                   if ts.polarity == r["polarity"])
    assert old.topics[0].contrib == pytest.approx(t["contrib"], abs=1e-6)
    assert all(sum(r["dropped"].values()) + len(r["pool"]) == r["n_tokens"] for r in out)
    assert {r["params"]["corpus"] for r in out} == {f"ref.txt@{out[0]['params']['corpus'].split('@')[1]}"}
    # an activation pool is never scored by NPMI over the text the activations came from
    assert main(["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-5", "--corpus",
                 str(docs), "--mode", "activation", "--quiet"]) == 2
    assert "holds the same text" in capsys.readouterr().err
    assert main(["topics", "--db", str(db), "--model", model, "--layer", "9"]) == 2  # no such layer
    assert "does not exist" in capsys.readouterr().err
    # with a neuron mode, the lo-* modes take the residual dimensions that exist (d_model 32, d_mlp 48); alone, a
    # range past them is refused
    few = ["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "30-33", "--k", "3", "--tau",
           "700", "--corpus", str(ref), "--min-count", "2", "--quiet"]
    assert main(few + ["--mode", "hi-i,lo-i"]) == 0
    con = duckdb.connect(str(db), read_only=True)
    assert dict(con.execute("SELECT mode, list(DISTINCT unit ORDER BY unit) FROM topic_sets WHERE unit >= 30 "
                            "GROUP BY mode").fetchall()) == {"hi-i": [30, 31, 32, 33], "lo-i": [30, 31]}
    con.close()
    assert main(few + ["--mode", "lo-i"]) == 2
    assert "lo-i takes residual dimensions 0..31" in capsys.readouterr().err
    # the viewer
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("NEURON_VIEWER_DB", str(db))
    unit = next(r["neuron"] for r in out if r["mode"] == "hi-c" and r["topics"])
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "viewer" / "views" / "neuron.py"),
                           default_timeout=60)
    for k, v in dict(model=model, layer=1, neuron=unit, tab="topics").items():
        at.query_params[k] = str(v)
    at.run()
    assert not at.exception and not at.error
    body = "".join(h.proto.body for h in at.html)
    word = next(r for r in out if r["mode"] == "hi-c" and r["neuron"] == unit and r["topics"])["topics"][0]["words"][0]
    assert 'class="chip"' in body and f">{word}</span>" in body
    assert len(at.get("plotly_chart")) == 1 and 'class="hist"' in body  # topics vs random sets; the histogram
    assert any("vs random sets" in m.value for m in at.markdown)
    assert any("ref.txt" in c.value and "words" in c.value for c in at.caption)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "viewer" / "views" / "search.py"),
                           default_timeout=60)
    at.query_params["model"] = model
    at.query_params["topic"] = word
    at.run()
    assert not at.exception
    assert any(word in " ".join(df.value.get("topic", [])) for df in at.dataframe)


def _worker_test_inputs(tmp_path) -> tuple[str, Path, Path]:
    """(a tiny model with word-like tokens, a corpus of 24 documents to harvest, a reference text for NPMI)."""
    import json

    from helpers import TINY_TEXT, tiny_model_folder

    model = str(tiny_model_folder(tmp_path / "words", "llama", vocab_size=700))
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"title": f"d{i}", "text": " ".join(TINY_TEXT[i % 4:] + TINY_TEXT[:i % 4])})
                            + "\n" for i in range(24)))
    ref = tmp_path / "ref.txt"
    ref.write_text("\n\n".join(TINY_TEXT * 40))
    return model, docs, ref


def _topic_tables(db) -> list:
    """Every stored topic set (but its timings), topic and star, sorted."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        return [con.execute(q).fetchall() for q in (
            "SELECT * EXCLUDE (seconds, created_at) FROM topic_sets ORDER BY ALL",
            "SELECT * FROM topics ORDER BY ALL", "SELECT * FROM topic_stars ORDER BY ALL")]
    finally:
        con.close()


def test_topics_in_worker_processes_equal_this_process(tmp_path, capsys, monkeypatch):
    """Two worker processes (spawned, one chunk of units per task) store exactly the rows one process stores."""
    from analysis.__main__ import main
    from analysis.executor import ProcessExecutor

    used = []
    plain_map = ProcessExecutor.map

    def spy(self, task, items, key=None):
        used.append(self.workers)
        yield from plain_map(self, task, items, key)

    monkeypatch.setattr(ProcessExecutor, "map", spy)
    model, docs, ref = _worker_test_inputs(tmp_path)
    tables = []
    for workers in (1, 2):
        db = tmp_path / f"w{workers}.duckdb"
        assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "1",
                     "--seq-len", "24", "--quiet"]) == 0
        assert main(["topics", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "0-11", "--k", "3",
                     "--tau", "700", "--corpus", str(ref), "--min-count", "2", "--chunk", "4", "--workers",
                     str(workers), "--quiet"]) == 0
        tables.append(_topic_tables(db))
    assert used == [2]  # --workers 1 ran in this process
    assert len(tables[0][0]) == 12 * 2 * 5 and tables[0][1] and tables[0] == tables[1]
    capsys.readouterr()


def test_topics_of_two_layers_share_the_callers_worker_processes(tmp_path, monkeypatch):
    """A build's topics stage hands every layer the same worker processes: started once, same rows as one
    process computes layer by layer."""
    import analysis.executor as executor_module
    import analysis.jobs.topics as topics_job
    from analysis.__main__ import main
    from analysis.executor import ProcessExecutor
    from analysis.topics.types import NpmiConfig, TopicConfig

    starts = []
    plain_start = ProcessExecutor._start

    def spy(self, task):
        starts.append(task)
        return plain_start(self, task)

    monkeypatch.setattr(ProcessExecutor, "_start", spy)
    monkeypatch.setattr(topics_job, "PROCESS_MIN_UNITS", 1)
    monkeypatch.setattr(executor_module, "cores", lambda: 2)  # one worker per core, whatever this machine has
    model, docs, ref = _worker_test_inputs(tmp_path)
    tables = []
    for shared in (False, True):
        db = tmp_path / f"shared{shared}.duckdb"
        assert main(["harvest", "--model", model, "--corpus", str(docs), "--db", str(db), "--layers", "0-1",
                     "--seq-len", "24", "--quiet"]) == 0
        processes = ProcessExecutor(2) if shared else None
        try:
            for layer in (0, 1):
                job = topics_job.TopicsJob(layer=layer, neurons="0-7", model=model, chunk=4,
                                           workers=0 if shared else 1, topic=TopicConfig(k=3, tau=700),
                                           npmi=NpmiConfig(corpora=(str(ref),), min_count=2))
                topics_job.topics(job, db, with_sets=False, processes=processes)
        finally:
            if processes is not None:
                processes.close()
        tables.append(_topic_tables(db))
    assert len(starts) == 1  # two layers, one start of the workers
    assert len(tables[0][0]) == 2 * 8 * 2 * 5 and tables[0][1] and tables[0] == tables[1]


def _worker_pid(_item) -> int:
    import os

    return os.getpid()


def test_process_executor_reuses_its_workers_for_one_key():
    from analysis.executor import ProcessExecutor

    ex = ProcessExecutor(2)
    try:
        first = set(ex.map(_worker_pid, range(6), key="a"))
        pool = set(ex._pool._processes)
        again = set(ex.map(_worker_pid, range(6), key="a"))
        assert first | again <= pool and ex._pool is not None
        other = set(ex.map(_worker_pid, range(6), key="b"))  # another task: new workers
        assert not other & pool
        list(ex.map(_worker_pid, range(2)))  # no key: workers of its own, ended with the map
        assert ex._pool is None
    finally:
        ex.close()


def test_process_executor_keeps_order_and_raises_a_task_error():
    import operator

    from analysis.executor import ProcessExecutor

    assert list(ProcessExecutor(2).map(operator.neg, range(7))) == [0, -1, -2, -3, -4, -5, -6]
    got = []
    with pytest.raises(ValueError):
        for x in ProcessExecutor(2).map(int, ["1", "2", "x", "4"]):
            got.append(x)
    assert got == [1, 2]


def test_process_executor_workers_go_with_a_killed_driver(tmp_path):
    """A driver killed outright (SIGKILL, as a killed build) takes its worker processes with it: none is left
    waiting for work that will never come."""
    import os
    import signal
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[1]
    script = tmp_path / "drive.py"
    script.write_text("import time\nfrom analysis.executor import ProcessExecutor\nif __name__ == '__main__':\n"
                      "    for _ in ProcessExecutor(2).map(time.sleep, [5] * 8):\n        pass\n")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)})

    def alive(pid: int) -> bool:
        try:
            return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    def tree() -> tuple[int | None, list[int]]:  # (the python running the script, its spawned workers)
        rows = [line.split(None, 2) for line in subprocess.run(["ps", "-ww", "-eo", "pid=,ppid=,args="], capture_output=True,
                                                               text=True).stdout.splitlines()]
        mine, changed = {proc.pid}, True  # sys.executable may be a launcher: walk every descendant
        while changed:
            more = {int(p) for p, pp, *_ in rows if int(pp) in mine} - mine
            mine |= more
            changed = bool(more)
        args = {int(p): (a[0] if a else "") for p, _pp, *a in rows if int(p) in mine}
        driver = next((p for p, a in args.items() if "drive.py" in a), None)
        return driver, [p for p, a in args.items() if "spawn_main" in a]

    driver, workers = None, []
    deadline = time.monotonic() + 60
    while len(workers) < 2 and time.monotonic() < deadline:
        driver, workers = tree()
        time.sleep(0.2)
    assert driver and len(workers) == 2 and all(alive(w) for w in workers)
    time.sleep(3)  # the workers are in their tasks now
    os.kill(driver, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(w) for w in workers), [w for w in workers if alive(w)]
