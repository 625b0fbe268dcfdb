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
