"""The nouns of the word-pool topic pipeline (Lim & Lauw 2023), named once.

Stages: projection (or an activation table) -> ``TokenRanking`` -> ``WordPool`` -> ``Star`` s -> ``Topic`` s,
collected per unit, mode and polarity in a ``UnitTopics``. Matrices are numpy arrays; NPMI values lie in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from analysis.types import MLP, UnitId

RESID = "resid"
"""The unit source of residual-stream dimensions (the lo-* modes' units; used by topics only)."""


class ProjectionMode(str, Enum):
    """How a unit is pushed to the vocabulary (the paper's modes i..iv)."""

    HI_C = "hi-c"
    """MLP neuron: its one-hot through the MLP output projection (row of w_out, plus the projection's bias),
    as the whole residual stream after layer L, then blocks L+1.., final norm, unembedding."""
    HI_I = "hi-i"
    """MLP neuron: its output-projection vector straight to final norm + unembedding."""
    LO_C = "lo-c"
    """Residual dimension: a one-hot as the residual stream entering block L, then blocks L.., final norm,
    unembedding."""
    LO_I = "lo-i"
    """Residual dimension: a one-hot through block L only, then final norm + unembedding."""

    @property
    def unit_kind(self) -> str:
        """'neuron' (an MLP neuron, 0..d_mlp-1) or 'dim' (a residual-stream dimension, 0..d_model-1)."""
        return "neuron" if self in (ProjectionMode.HI_C, ProjectionMode.HI_I) else "dim"

    @property
    def unit_source(self) -> str:
        """The source of this mode's units: MLP neurons (hi-*) or residual dimensions (lo-*)."""
        return MLP if self.unit_kind == "neuron" else RESID


ACTIVATION_SOURCE = "activation"
"""The ``mode`` of a ranking built from harvested mean activations (of any unit) rather than from a projection."""


class Polarity(str, Enum):
    POS = "pos"
    """The top tau tokens (largest logits, or largest mean activations)."""
    NEG = "neg"
    """The bottom tau tokens (smallest logits, or most negative mean activations)."""


@dataclass(frozen=True)
class TopicConfig:
    """Every parameter of the topic pipeline, defaults from the paper's demo unless said otherwise."""

    k: int = 10
    """Words per topic (the clique size)."""
    tau: int = 900
    """Tokens taken from each end of a unit's ranking before filtering to words."""
    theta_l: float = 0.1
    """Lowest NPMI of a star edge."""
    theta_u: float = 1.0
    """Highest NPMI of a star edge."""
    kappa_l: int | None = None
    """Fewest neighbours a word needs to centre or join a star; None means k - 1 (a star then has >= k words)."""
    kappa_u: int = 32
    """Most words in a star (centre included); the centre keeps its strongest neighbours."""
    min_word_count: int = 0
    """Extra cut on the pool: corpus occurrences a word needs beyond the statistics' own ``min_count``."""
    min_pair_count: int = 1
    """Pairs seen together in fewer windows than this get NPMI -1 (1: only pairs never seen together)."""
    eps: float = 1e-12
    """Added to every p(a, b) before NPMI, as the reference code does (its ``npmi(smooth=True)``): a pair never
    seen together then scores log(eps / (p(a) p(b))) / -log(eps), about -0.1 for rare words to -0.4 for common
    ones over reference-en, instead of the limit -1 (``eps = 0``), which would count a pair as opposed whenever a
    finite corpus happens not to hold it."""
    random_draws: int = 100
    """Random k-word sets from each pool (seeded by the unit index) whose mean NPMI is the topics' baseline."""
    max_topics: int | None = None
    """Solve at most this many stars (best-ranked first); None solves every star."""
    time_limit_s: float = 10.0
    """Per-star limit of the exact solver; when hit the topic is the best found, with optimal=False."""

    @property
    def min_neighbours(self) -> int:
        return self.k - 1 if self.kappa_l is None else self.kappa_l

    def __post_init__(self):
        if self.k < 2:
            raise ValueError(f"k must be at least 2, got {self.k}")
        if self.tau < 1:
            raise ValueError(f"tau must be at least 1, got {self.tau}")
        if not -1.0 <= self.theta_l <= self.theta_u <= 1.0:
            raise ValueError(f"need -1 <= theta_l <= theta_u <= 1, got [{self.theta_l}, {self.theta_u}]")
        if self.kappa_u < self.k:
            raise ValueError(f"kappa_u ({self.kappa_u}) must be at least k ({self.k}): a star must hold a topic")


@dataclass(frozen=True)
class NpmiConfig:
    """How the reference corpus statistics are counted (``npmi.reference_stats``)."""

    corpora: tuple[str, ...] = ("reference-en",)
    """Corpus names or paths (``analysis.corpus.load_corpus``), concatenated in order. The default is the ~14 M
    words of ``reference-en`` (``analysis.reference_corpus``); the old small one is "enwiki-sample,lee-background"."""
    window: int = 50
    """Sliding-window length in words. 50, chosen on a tuning sample (layers 7 and 22, 100 seeded neurons each,
    never the reported layers): over reference-en's 14.7 M words a 10-word window leaves 20 % of the best topics'
    word pairs unseen (best topic NPMI 0.044 on average), 30 words 14 % (0.087), 50 words 13 % (0.099)."""
    min_count: int = 5
    """Fewest corpus occurrences of a vocabulary word."""
    content_words: bool = True
    """Count only words a pool can hold (``analysis.words.is_pool_word``): same NPMI for those, far smaller counts."""


@dataclass(frozen=True)
class TokenRanking:
    """One end of one unit's token ranking: ``token_ids[0]`` is the most extreme token."""

    mode: str
    """A ``ProjectionMode`` value or ``ACTIVATION_SOURCE``."""
    unit: UnitId
    """An MLP neuron (hi-*), a residual dimension (lo-*, source ``RESID``), or any harvested unit (activation)."""
    polarity: Polarity
    token_ids: tuple[int, ...]
    scores: tuple[float, ...]
    """Logit (projection) or mean activation (activation source) of each token, same order."""


@dataclass(frozen=True)
class WordPool:
    """Distinct corpus words of a ranking, in ranking order."""

    words: tuple[str, ...]
    token_ids: tuple[int, ...]
    """The first (most extreme) token that gave each word."""
    n_tokens: int
    """Tokens looked at (the ranking's length)."""
    dropped: tuple[tuple[str, int], ...] = ()
    """Tokens left out, by reason (``analysis.words.DROP_REASONS``), in that order; reasons with none are omitted."""


@dataclass(frozen=True, eq=False)
class Star:
    """A centre word, its strongest graph neighbours, and every pairwise NPMI among them."""

    words: tuple[str, ...]
    """Neighbours by decreasing edge weight to the centre, then the centre last."""
    center: str
    mean_edge: float
    """The star's rank key: the centre's mean edge weight in the thresholded graph (before the cap)."""
    npmi: np.ndarray
    """``[len(words), len(words)]`` full NPMI matrix (not thresholded), zero diagonal."""


@dataclass(frozen=True)
class SolveStats:
    method: str
    """'bnb', 'milp', 'greedy', 'brute'."""
    seconds: float
    nodes: int = 0
    """Search nodes visited (bnb) or branch-and-bound nodes reported by HiGHS (milp)."""
    incumbent_sum: float | None = None
    """Edge-weight sum of the starting solution (bnb: greedy + local search)."""


@dataclass(frozen=True)
class CliqueResult:
    """A k-subset of a weighted complete graph and its weight."""

    indices: tuple[int, ...]
    """Sorted vertex indices; empty when the graph has fewer than k vertices."""
    weight_sum: float
    """Sum of the pairwise weights among ``indices`` (recomputed from the matrix)."""
    optimal: bool
    """Proved optimal (False: time limit hit, or a heuristic)."""
    stats: SolveStats

    @property
    def score(self) -> float:
        """Mean pairwise weight (the topic's NPMI); nan when empty."""
        k = len(self.indices)
        return self.weight_sum / (k * (k - 1) / 2) if k >= 2 else float("nan")


@dataclass(frozen=True)
class Topic:
    words: tuple[str, ...]
    """The k words, in the star's order."""
    score: float
    """Mean NPMI over the k(k-1)/2 pairs, recomputed from the star's matrix."""
    star_index: int
    """Index of the star in ``UnitTopics.stars``."""
    optimal: bool
    stats: SolveStats
    contrib: tuple[float, ...] = ()
    """Each word's mean NPMI with the topic's other words (the viewer shades the words by it; stored in place of
    the star's matrix of up to 32 x 32 numbers)."""


def contributions(words, star_words, npmi: np.ndarray) -> list[float]:
    """Each of ``words``' mean NPMI with the other ``words``, from the matrix ``npmi`` over ``star_words``."""
    idx = [list(star_words).index(w) for w in words]
    sub = np.asarray(npmi, dtype=np.float64)[np.ix_(idx, idx)]
    n = len(idx)
    return [float((sub[i].sum() - sub[i, i]) / (n - 1)) if n > 1 else 0.0 for i in range(n)]


@dataclass(frozen=True)
class UnitTopics:
    """All the pipeline says about one unit, one mode, one polarity."""

    unit: UnitId
    mode: str
    polarity: Polarity
    pool: WordPool
    stars: tuple[Star, ...]
    topics: tuple[Topic, ...]
    """Sorted by decreasing score."""
    reason: str | None = None
    """Why ``topics`` is empty (pool too small, no star with enough neighbours); None otherwise."""
    params: TopicConfig = field(default_factory=TopicConfig)
    random_scores: tuple[float, ...] = ()
    """``random_draws`` mean NPMI of random k-word sets from the pool (``pipeline.random_topic_scores``): the
    baseline its topics are compared with; () when the pool has fewer than k words."""


@dataclass(frozen=True)
class ScoredTopics:
    """A unit's topics (with their random-set baseline, ``topics.random_scores``) and their cost: what the store
    keeps."""

    topics: UnitTopics
    seconds: float
    """This result's share of the wall time of its batch."""
