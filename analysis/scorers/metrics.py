"""Metrics of a scorer's verdicts and their 95 % intervals (pure functions).

A classification scorer gives each example a label (1: activating / correctly highlighted, 0: not) and a
prediction: a score (higher: more likely 1) for AUROC, and a 0/1 verdict for balanced accuracy and F1. Intervals
are percentile bootstraps over examples, stratified (each class resampled to its own size), seeded, so a rerun
gives the same interval; the correlation score's resamples whole records (its tokens are not independent).
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 1000
"""Bootstrap resamples per interval."""
LEVEL = 0.95


def auroc(scores, labels) -> float | None:
    """P(score of a random positive > score of a random negative), ties counting one half (the Mann-Whitney U
    statistic over n_pos · n_neg); None without both classes."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    pos, neg = s[y], s[~y]
    if pos.size == 0 or neg.size == 0:
        return None
    _values, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # 1-based, ties sharing their mean rank
    u = ranks[y].sum() - pos.size * (pos.size + 1) / 2
    return float(u / (pos.size * neg.size))


def balanced_accuracy(verdicts, labels) -> float | None:
    """(true positive rate + true negative rate) / 2; None without both classes."""
    v, y = np.asarray(verdicts, dtype=bool), np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None
    return float((v[y].mean() + (~v[~y]).mean()) / 2)


def f1(verdicts, labels) -> float | None:
    """2 · precision · recall / (precision + recall) of class 1; 0 when nothing is right; None without positives."""
    v, y = np.asarray(verdicts, dtype=bool), np.asarray(labels, dtype=bool)
    if not y.any():
        return None
    tp = float((v & y).sum())
    return 0.0 if tp == 0 else 2 * tp / (v.sum() + y.sum())


def _counts(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``[n, size]``: how often each of ``size`` items is drawn in each of ``n`` resamples of ``size`` draws."""
    if size == 0:
        return np.zeros((n, 0))
    rows = np.repeat(np.arange(n) * size, size)
    return np.bincount(rows + rng.integers(0, size, n * size), minlength=n * size).reshape(n, size).astype(np.float64)


def _class_counts(labels: np.ndarray, rng: np.random.Generator, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per class (1, then 0): its positions and ``[n, class size]`` counts of how often each of its examples is
    drawn in each of ``n`` resamples (each class resampled to its own size)."""
    out = []
    for cls in (True, False):
        where = np.flatnonzero(labels == cls)
        out.append((where, _counts(rng, n, where.size)))
    return out


def interval(values: np.ndarray) -> tuple[float | None, float | None]:
    """The central ``LEVEL`` interval of bootstrap values (NaNs dropped); (None, None) if none are finite."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None, None
    lo, hi = np.quantile(v, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return float(lo), float(hi)


def bootstrap_classification(metric, predictions, labels, seed: int = 0, n: int = RESAMPLES
                             ) -> tuple[float | None, float | None]:
    """95 % interval of ``metric(predictions, labels)`` (``auroc``, ``balanced_accuracy`` or ``f1``) over stratified
    resamples, each computed from the resample's counts in one matrix product (a resample draws each class's
    examples with replacement: ``metric`` of the examples repeated by their counts)."""
    p, y = np.asarray(predictions), np.asarray(labels, dtype=bool)
    if y.all() or not y.any():
        return None, None
    (pos, c1), (neg, c0) = _class_counts(y, np.random.default_rng(seed), n)
    n1, n0 = pos.size, neg.size
    if metric is auroc:
        a, b = p[pos].astype(np.float64)[:, None], p[neg].astype(np.float64)[None, :]
        wins = (a > b) + 0.5 * (a == b)  # [n1, n0]: each (positive, negative) pair's share of the U statistic
        return interval(((c1 @ wins) * c0).sum(1) / (n1 * n0))
    v = p.astype(bool)
    tp, fp = c1 @ v[pos], c0 @ v[neg]
    if metric is balanced_accuracy:
        return interval((tp / n1 + (n0 - fp) / n0) / 2)
    if metric is f1:
        with np.errstate(invalid="ignore", divide="ignore"):
            return interval(np.where(tp > 0, 2 * tp / (2 * tp + fp + (n1 - tp)), 0.0))
    raise ValueError(f"no bootstrap for {metric!r}")


def bootstrap_correlation(real: list[list[float]], predicted: list[list[float]], seed: int = 0, n: int = RESAMPLES
                          ) -> tuple[float | None, float | None]:
    """95 % interval of the pooled Pearson r (analysis.scoring.correlation_score) over resamples of whole records:
    each record's sums (n, x, y, x², y², xy) are added per resample, so it costs one matrix product."""
    if len(real) < 2:
        return None, None
    sums = np.array([[len(x), np.sum(x), np.sum(y), np.dot(x, x), np.dot(y, y), np.dot(x, y)]
                     for x, y in ((np.asarray(a, np.float64), np.asarray(b, np.float64))
                                  for a, b in zip(real, predicted))])
    rng = np.random.default_rng(seed)
    counts = _counts(rng, n, len(real))
    t, sx, sy, sxx, syy, sxy = (counts @ sums).T
    vx, vy = sxx - sx * sx / t, syy - sy * sy / t
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (sxy - sx * sy / t) / np.sqrt(vx * vy)
    r[(vx <= 1e-12 * np.maximum(sxx, 1)) | (vy <= 1e-12 * np.maximum(syy, 1))] = 0.0  # constant: scored 0, as r is
    return interval(r)
