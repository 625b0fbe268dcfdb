"""Word-pool topics of neurons (Lim & Lauw 2023, "superposed topics"; issue 6).

A unit (an MLP neuron, or a residual-stream dimension) is projected onto the vocabulary (``projection``) or
ranked by its harvested mean activations (``pool.activation_ranking``); its most extreme tokens become a pool
of corpus words (``pool``); NPMI from a reference corpus (``npmi``) turns the pool into a weighted graph, the
star heuristic (``stars``) splits it into dense candidate sets, and each is solved exactly for its k words of
highest total pairwise NPMI (``clique``). ``pipeline`` chains the stages. No streamlit, no SQL here.
"""

from analysis.topics.clique import solve_bnb, solve_greedy, solve_milp, subset_weight
from analysis.topics.npmi import (CooccurrenceStats, cached_reference_stats, count_cooccurrences, load_stats, reference_stats, save_stats,
                                  stats_params)
from analysis.topics.pipeline import random_topic_scores, topic_score, topics_for_units, topics_from_ranking
from analysis.topics.pool import activation_ranking, activation_table, build_pool
from analysis.topics.stars import StarIndices, find_stars
from analysis.topics.types import (ACTIVATION_SOURCE, CliqueResult, NpmiConfig, Polarity, ProjectionMode, RESID,
                                   ScoredTopics, SolveStats, Star, Topic, TokenRanking, TopicConfig, UnitTopics, WordPool)

__all__ = [
    "ACTIVATION_SOURCE", "CliqueResult", "CooccurrenceStats", "NpmiConfig", "Polarity", "ProjectionMode", "RESID",
    "ScoredTopics", "SolveStats", "Star", "StarIndices", "Topic", "TokenRanking", "TopicConfig", "UnitTopics", "WordPool",
    "activation_ranking", "activation_table", "build_pool", "cached_reference_stats", "count_cooccurrences", "find_stars", "load_stats",
    "project_rankings", "projection_logits", "random_topic_scores",
    "reference_stats", "save_stats", "solve_bnb", "solve_greedy", "solve_milp", "stats_params", "subset_weight",
    "topic_score", "topics_for_units", "topics_from_ranking",
]


def __getattr__(name: str):
    """The projections need torch: imported on first use, so importing the configs stays light (CLI parser)."""
    if name in ("project_rankings", "projection_logits"):
        from analysis.topics import projection

        return getattr(projection, name)
    raise AttributeError(f"module 'analysis.topics' has no attribute {name!r}")
