"""Word-pool topics of units: ranking -> pool -> NPMI graph -> stars -> one exact topic per star.

``topics_from_ranking`` is the whole method on one ranking (from a projection or from a harvest's token
table); ``topics_for_units`` projects a batch of units of one layer and runs it on each.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from analysis.topics.clique import solve_bnb, subset_weight
from analysis.topics.npmi import CooccurrenceStats
from analysis.topics.pool import build_pool
from analysis.topics.stars import find_stars
from analysis.topics.types import (UnitTopics, Polarity, ProjectionMode, Star, Topic, TokenRanking, TopicConfig,
                                   contributions)


def topics_from_ranking(ranking: TokenRanking, tokenizer, stats: CooccurrenceStats,
                        config: TopicConfig = TopicConfig()) -> UnitTopics:
    """Topics of one ranking. Empty topics come with a ``reason``; they are not an error."""
    k = config.k
    pool = build_pool(ranking, tokenizer, stats, config.min_word_count)

    rnd: tuple[float, ...] = ()

    def result(stars=(), topics=(), reason=None):
        return UnitTopics(unit=ranking.unit, mode=ranking.mode, polarity=ranking.polarity, pool=pool, stars=tuple(stars), topics=tuple(topics),
                            reason=reason, params=config, random_scores=rnd)

    if len(pool.words) < k:
        return result(reason=f"the pool has {len(pool.words)} corpus words among the {pool.n_tokens} tokens, "
                             f"fewer than k = {k}")
    npmi = stats.npmi_matrix(pool.words, config.min_pair_count, config.eps)
    rnd = tuple(random_topic_scores(pool.words, stats, k, config.random_draws, seed=ranking.unit.index,
                                    npmi=npmi).tolist())
    found = find_stars(npmi, k=k, theta_l=config.theta_l, theta_u=config.theta_u, kappa_l=config.kappa_l,
                       kappa_u=config.kappa_u)
    if not found:
        return result(reason=f"no star: no word of the {len(pool.words)}-word pool has {config.min_neighbours} "
                             f"neighbours with NPMI in [{config.theta_l}, {config.theta_u}] that are free to "
                             f"form a star of at least {k} words")
    stars = []
    for s in found:
        idx = np.asarray(s.indices)
        stars.append(Star(words=tuple(pool.words[i] for i in idx), center=pool.words[s.center],
                          mean_edge=s.mean_edge, npmi=npmi[np.ix_(idx, idx)]))
    topics = []
    for si, star in enumerate(stars[: config.max_topics]):
        res = solve_bnb(star.npmi, k, time_limit_s=config.time_limit_s)
        score = subset_weight(star.npmi, res.indices) / (k * (k - 1) / 2)
        words = tuple(star.words[i] for i in res.indices)
        topics.append(Topic(words=words, score=float(score), star_index=si, optimal=res.optimal, stats=res.stats,
                            contrib=tuple(contributions(words, star.words, star.npmi))))
    topics.sort(key=lambda t: -t.score)
    return result(stars, topics)


def topics_for_units(subject, layer: int, units: Sequence[int] | None, mode: ProjectionMode | str,
                     stats: CooccurrenceStats, config: TopicConfig = TopicConfig(),
                     polarities: Sequence[Polarity | str] = (Polarity.POS, Polarity.NEG), batch_size: int = 256,
                     progress: bool = False, sae=None) -> list[UnitTopics]:
    """Project ``units`` of ``layer`` in ``mode`` and find each one's topics, per polarity.

    Order: unit by unit, polarities in the order given. ``units=None`` means every unit of the layer; ``sae``: the
    units are its features (hi-* modes).
    """
    from tqdm import tqdm

    from analysis.topics.projection import project_rankings

    rankings = project_rankings(subject, layer, mode, units, tau=config.tau, batch_size=batch_size,
                                polarities=[Polarity(p) for p in polarities], sae=sae)
    return [topics_from_ranking(r, subject.tokenizer, stats, config)
            for r in tqdm(rankings, desc=f"topics L{layer} {ProjectionMode(mode).value}", disable=not progress)]


def topic_score(words: Sequence[str], stats: CooccurrenceStats, min_pair_count: int = 1, eps: float = 0.0) -> float:
    """Mean NPMI over the pairs of ``words`` (all in the statistics' vocabulary)."""
    m = stats.npmi_matrix(list(words), min_pair_count, eps)
    n = len(words)
    return float(np.triu(m, 1).sum() / (n * (n - 1) / 2)) if n >= 2 else float("nan")


def random_topic_scores(words: Sequence[str], stats: CooccurrenceStats, k: int = 10, n_draws: int = 100,
                        seed: int = 0, min_pair_count: int = 1, eps: float = 0.0,
                        npmi: np.ndarray | None = None) -> np.ndarray:
    """``[n_draws]`` mean NPMI of random k-word sets drawn (without replacement) from ``words``: the baseline
    a topic from the same pool is compared with. Empty if the pool has fewer than k words. ``npmi``: the words'
    NPMI matrix when the caller has it (else computed with ``min_pair_count`` and ``eps``)."""
    words = list(words)
    if len(words) < k:
        return np.zeros(0)
    m = stats.npmi_matrix(words, min_pair_count, eps) if npmi is None else npmi
    rng = np.random.default_rng(seed)
    idx = np.array([rng.choice(len(words), size=k, replace=False) for _ in range(n_draws)]).reshape(n_draws, k)
    # each draw's pairs: the symmetric matrix (diagonal 0) summed over the draw's block, halved
    return m[idx[:, :, None], idx[:, None, :]].sum(axis=(1, 2)) / 2 / (k * (k - 1) / 2)
