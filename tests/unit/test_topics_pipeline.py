"""Word-pool topics, from a ranking to topics: the word pool, stars, exact solving against brute force and
HiGHS, the pipeline on planted topics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analysis.topics import (Polarity, TokenRanking, TopicConfig, build_pool, count_cooccurrences, find_stars,
                             random_topic_scores, solve_bnb, solve_greedy, solve_milp, topic_score,
                             topics_from_ranking)
from analysis.types import MLP, UnitId
from analysis.words import STOP_WORDS, is_pool_word, normalise_token

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
