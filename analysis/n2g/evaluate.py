"""Precision / recall / F1 of predicted firing, as the N2G paper evaluates graphs.

A token fires when its activation >= ``FIRING_FRACTION`` x the neuron's max; predicted to fire when the
prediction >= the same threshold. Padding never enters (callers pass real tokens only). Metrics with an empty
denominator are 0, not NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

FIRING_FRACTION = 0.5
"""A token fires when its activation is at least this fraction of the neuron's max activation: Neuron2Graph's
definition (Foote et al. 2023), used to score a graph's predictions (precision / recall / F1 of firing tokens)
and, in fitting, to tell firing patterns from non-firing ones."""


@dataclass(frozen=True)
class PRF:
    precision: float
    recall: float
    f1: float


def prf(real_fires: list[bool], pred_fires: list[bool]) -> PRF:
    tp = sum(r and p for r, p in zip(real_fires, pred_fires))
    fp = sum((not r) and p for r, p in zip(real_fires, pred_fires))
    fn = sum(r and (not p) for r, p in zip(real_fires, pred_fires))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return PRF(precision, recall, f1)


def firing_metrics(real: list[list[float]], predicted: list[list[float]], max_activation: float) -> tuple[PRF, PRF]:
    """(firing, non-firing) metrics pooled over all tokens of all records."""
    thr = FIRING_FRACTION * max_activation
    r = [v >= thr for rec in real for v in rec]
    p = [v >= thr for rec in predicted for v in rec]
    if len(r) != len(p):
        raise ValueError(f"{len(r)} real values but {len(p)} predicted")
    return prf(r, p), prf([not x for x in r], [not x for x in p])
