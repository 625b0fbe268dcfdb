"""Which of a unit's records each method may learn from and which it is scored on: the one place for splits.

Splits follow OpenAI's interleaving of a ``UnitRecord``'s two record lists, over the first ``N2G_HEAD`` (20) top
records (OpenAI's count):

================  ===============================  ==========================
split             top records (highest first)      random sample
================  ===============================  ==========================
explainer train   0::4                             -
calibration       1::4                             0::3
valid             2::4                             1::3
test              3::4                             2::3
================  ===============================  ==========================

Neuron2Graph trains on top 0::4 + 1::4 (explainer train + calibration) and holds out top 2::4 + 3::4. The top
records past the first 20 (the default harvest keeps 30) are Neuron2Graph's extra train records
(``N2GConfig.extra_records``) and no other split's: the explainers see the same 5 records, and every scored set
is the same, whatever the harvest's top-k.

Explaining from quantiles (``explainer_quantiles``): the first 3 of the explainer's top records and the activating
records at even positions of the random pool's quantile bins (highest bin first), 5 in all: examples across the
unit's range of activation, not only its top.

Classification scorers (detection, fuzzing, embedding: ``classification_examples``) take *activating* examples
from the held-out top records (2::4 and 3::4 of the first 20) and the quantile bins' records at odd positions,
each reaching 1 on the prompts' 0–10 scale (a tenth of the unit's max) and above the median of the random windows'
maxima; and *non-activating* ones from the rest of the unseen random sample and the quantile bins: windows below a
tenth of the max, or no higher than that median (a dense neuron reaches a tenth of its max in most windows: it is
contrasted between its top windows and its quieter half; a sparse unit's non-activating windows are silent). At
most ``EXAMPLES_PER_CLASS`` of each, so the classes are balanced whenever the harvest has enough of both. None of
them is a record any explainer saw.

Scoring sets, of at most ``2 n`` records: "top-and-random" is valid top [:n] + valid random [:n] (valid top of
the first ``N2G_HEAD`` only: past them, Neuron2Graph may train);
"random-only" is valid random + test random, [:2n].

A random window can also be one of the top windows. The random splits are taken from the random sample
*without* the windows of top 0::4 and 1::4 and of every top record past the first 20 (what the explainer or
Neuron2Graph may train on), so a scored record is never one a method has seen.
"""

from __future__ import annotations

from analysis.types import ActivationRecord, UnitRecord

SCORING_SETS = ("top-and-random", "random-only")
N2G_HEAD = 20
"""The top records Neuron2Graph's split interleaves (the default harvest's top-k); any past them only train."""
EXAMPLES_PER_CLASS = 20
"""Activating and non-activating examples a classification scorer takes at most, each."""


def is_activating(record: ActivationRecord, max_activation: float) -> bool:
    """Some token reaches 1 on the prompts' 0–10 scale (``analysis.scoring.normalise``): a tenth of the max."""
    return max_activation > 0 and max(record.activations, default=0.0) >= max_activation / 10


def median_window_max(rec: UnitRecord) -> float:
    """The median of the random sample's window maxima (0 without a sample)."""
    import numpy as np

    maxima = [max(r.activations, default=0.0) for r in rec.random_sample]
    return float(np.median(maxima)) if maxima else 0.0


def _quantile_records(rec: UnitRecord, parity: int) -> list[ActivationRecord]:
    """The activating records at ``parity`` (0: even, 1: odd) positions of each quantile bin, highest bin first."""
    return [r for b in reversed(rec.random_sample_by_quantile) for r in b[parity::2]
            if is_activating(r, rec.stats.max)]


def explainer_quantiles(rec: UnitRecord, n: int = 5) -> list[ActivationRecord]:
    """The records an explainer sees when it explains from quantiles (see the module doc), at most ``n``."""
    top = explainer_train(rec)[:3]
    seen = {r.window_id for r in top}
    return (top + [r for r in _quantile_records(rec, 0) if r.window_id not in seen])[:n]


def classification_examples(rec: UnitRecord, per_class: int = EXAMPLES_PER_CLASS
                            ) -> tuple[list[ActivationRecord], list[ActivationRecord]]:
    """(activating, non-activating) examples for the classification scorers (see the module doc); no window twice."""
    top = rec.most_positive_activation_records
    seen = {r.window_id for r in top[0::4] + top[1::4] + top[N2G_HEAD:]}
    seen |= {r.window_id for r in explainer_quantiles(rec)}
    activating, non, taken, median = [], [], set(seen), median_window_max(rec)

    def fires(r) -> bool:
        return is_activating(r, rec.stats.max) and max(r.activations) > median

    for r in top[:N2G_HEAD][2::4] + top[:N2G_HEAD][3::4] + _quantile_records(rec, 1):
        if r.window_id not in taken and fires(r):
            activating.append(r)
            taken.add(r.window_id)
    for r in rec.random_sample + [r for b in rec.random_sample_by_quantile for r in b]:
        if r.window_id not in taken and not fires(r):
            non.append(r)
            taken.add(r.window_id)
    return activating[:per_class], non[:per_class]


def _unseen_random(rec: UnitRecord) -> list[ActivationRecord]:
    """The random sample, in its order, without the windows of top 0::4 and 1::4 and of the top records past the
    first ``N2G_HEAD`` (see the module doc)."""
    top = rec.most_positive_activation_records
    seen = {r.window_id for r in top[0::4] + top[1::4] + top[N2G_HEAD:]}
    return [r for r in rec.random_sample if r.window_id not in seen]


def explainer_train(rec: UnitRecord) -> list[ActivationRecord]:
    """The records the explainer sees: top 0::4 (of the first 20)."""
    return rec.most_positive_activation_records[:N2G_HEAD][0::4]


def calibration(rec: UnitRecord) -> list[ActivationRecord]:
    """Records for calibrating a simulator's scale: top 1::4 (of the first 20), then random 0::3 (of the unseen
    random sample)."""
    return rec.most_positive_activation_records[:N2G_HEAD][1::4] + _unseen_random(rec)[0::3]


def scoring_records(rec: UnitRecord, scoring_set: str, n: int = 5) -> list[ActivationRecord]:
    """The records an explanation is scored on (``scoring_set`` one of ``SCORING_SETS``), at most ``2 n``."""
    top, rnd = rec.most_positive_activation_records, _unseen_random(rec)
    if scoring_set == "top-and-random":
        return top[:N2G_HEAD][2::4][:n] + rnd[1::3][:n]
    if scoring_set == "random-only":
        return (rnd[1::3] + rnd[2::3])[: 2 * n]
    raise ValueError(f"unknown scoring set {scoring_set!r}: use one of {', '.join(SCORING_SETS)}")


def n2g_train_test(rec: UnitRecord, extra: int = 0) -> tuple[list[ActivationRecord], list[ActivationRecord],
                                                             list[ActivationRecord]]:
    """Neuron2Graph's (train, extra train, held-out test) records: (head 0::4 + 1::4, up to ``extra`` top records
    past the head, head 2::4 + 3::4), the head being the first ``N2G_HEAD`` top records."""
    top = rec.most_positive_activation_records
    head = top[:N2G_HEAD]
    return head[0::4] + head[1::4], top[N2G_HEAD : N2G_HEAD + extra], head[2::4] + head[3::4]
