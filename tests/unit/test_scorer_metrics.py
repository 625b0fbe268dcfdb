"""The scorers' metrics against independent computations: scipy's Mann-Whitney U, counts by hand, closed forms."""

import numpy as np
import pytest
import scipy.stats

from analysis.scorers import classification
from analysis.scorers import metrics as m
from analysis.scoring import correlation_score


@pytest.mark.parametrize("seed", range(5))
def test_auroc_is_mann_whitney_u(seed):
    rng = np.random.default_rng(seed)
    s = rng.integers(0, 6, 40).astype(float)  # many ties
    y = rng.random(40) < 0.4
    u = scipy.stats.mannwhitneyu(s[y], s[~y], alternative="two-sided").statistic
    assert m.auroc(s, y) == pytest.approx(u / (y.sum() * (~y).sum()), abs=1e-12)
    assert m.auroc(s, np.ones(40, bool)) is None


def test_balanced_accuracy_and_f1_by_hand():
    v = [1, 1, 0, 0, 1, 0, 1]
    y = [1, 0, 0, 1, 1, 0, 0]
    tp, fn, tn, fp = 2, 1, 2, 2  # by hand
    assert m.balanced_accuracy(v, y) == pytest.approx((tp / (tp + fn) + tn / (tn + fp)) / 2)
    precision, recall = tp / (tp + fp), tp / (tp + fn)
    assert m.f1(v, y) == pytest.approx(2 * precision * recall / (precision + recall))
    assert m.f1([0, 0], [1, 0]) == 0.0 and m.balanced_accuracy([1], [1]) is None


def test_bootstrap_of_balanced_accuracy_matches_its_closed_form():
    """Stratified resampling: the balanced accuracy's bootstrap sd is sqrt(p1 q1 / n1 + p0 q0 / n0) / 2."""
    n1, n0 = 400, 600
    y = np.r_[np.ones(n1, bool), np.zeros(n0, bool)]
    v = np.r_[np.arange(n1) < 0.7 * n1, np.arange(n0) < 0.2 * n0]  # TPR 0.7, TNR 0.8
    lo, hi = m.bootstrap_classification(m.balanced_accuracy, v, y, seed=3, n=4000)
    sd = np.sqrt(0.7 * 0.3 / n1 + 0.8 * 0.2 / n0) / 2
    assert (hi - lo) / (2 * 1.959964 * sd) == pytest.approx(1.0, abs=0.06)
    assert lo < 0.75 < hi
    assert (lo, hi) == m.bootstrap_classification(m.balanced_accuracy, v, y, seed=3, n=4000)  # seeded


@pytest.mark.parametrize("metric", [m.auroc, m.balanced_accuracy, m.f1])
def test_bootstrap_equals_the_metric_of_each_resample_by_hand(metric):
    """The counts-and-matrix bootstrap against the metric computed on each resampled set of examples."""
    rng = np.random.default_rng(1)
    y = rng.random(30) < 0.4
    p = rng.integers(0, 4, 30).astype(float) if metric is m.auroc else (rng.random(30) < 0.5).astype(float)
    lo, hi = m.bootstrap_classification(metric, p, y, seed=5, n=200)
    g = np.random.default_rng(5)  # the same draws: positives' then negatives' indices, per class
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    dp = pos[g.integers(0, pos.size, 200 * pos.size)].reshape(200, pos.size)
    dn = neg[g.integers(0, neg.size, 200 * neg.size)].reshape(200, neg.size)
    vals = [metric(p[np.r_[a, b]], y[np.r_[a, b]]) for a, b in zip(dp, dn)]
    assert (lo, hi) == pytest.approx(tuple(np.quantile(vals, [0.025, 0.975])), abs=1e-12)


def test_bootstrap_correlation_equals_resampling_records_by_hand():
    rng = np.random.default_rng(0)
    real = [list(rng.normal(size=rng.integers(3, 9))) for _ in range(12)]
    sim = [list(np.asarray(r) + rng.normal(size=len(r))) for r in real]
    lo, hi = m.bootstrap_correlation(real, sim, seed=7, n=300)
    # the same resamples, each scored by the pooled r of analysis.scoring
    g = np.random.default_rng(7)
    picks = g.integers(0, len(real), 300 * len(real)).reshape(300, len(real))
    rs = [correlation_score([real[i] for i in p], [sim[i] for i in p]) for p in picks]
    want = np.quantile(rs, [0.025, 0.975])
    assert (lo, hi) == pytest.approx(tuple(want), abs=1e-9)


def test_classification_says_why_without_both_classes():
    ex = [{"label": 1, "prediction": 0.3, "verdict": None}] * 3
    r = classification("embedding", {}, ex)
    assert r.score is None and "non-activating" in r.error
    ex = [{"label": 1, "prediction": None, "verdict": 1}, {"label": 0, "prediction": None, "verdict": 0}]
    r = classification("detection", {}, ex)
    assert r.score == 1.0 and "auroc" not in r.metrics and any("log-probabilities" in n for n in r.notes)
