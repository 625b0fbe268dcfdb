"""Scores against independent scipy/numpy computations, and their invariants."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.scoring import absolute_dev_explained, correlation_score, normalise, rsquared_score, to_neuron_units

REAL = [[0.0, 1.0, 5.0, 0.2], [3.0, 0.0, 0.0], [0.5, 7.0]]
SIM = [[0.0, 2.0, 8.0, 1.0], [4.0, 0.0, 1.0], [0.0, 9.0]]


def test_pooled_correlation_equals_scipy_on_concatenated_tokens():
    flat_r = [v for r in REAL for v in r]
    flat_s = [v for r in SIM for v in r]
    assert correlation_score(REAL, SIM) == pytest.approx(scipy.stats.pearsonr(flat_r, flat_s).statistic, abs=1e-12)
    per_record_mean = np.mean([scipy.stats.pearsonr(r, s).statistic for r, s in zip(REAL[:2], SIM[:2])])
    assert correlation_score(REAL[:2], SIM[:2]) != pytest.approx(per_record_mean)  # pooled, not averaged


def test_rsquared_and_absolute_deviation_by_hand():
    r = np.array([v for x in REAL for v in x])
    s = np.array([v for x in SIM for v in x])
    assert rsquared_score(REAL, SIM) == pytest.approx(1 - ((r - s) ** 2).sum() / (r ** 2).sum())
    assert absolute_dev_explained(REAL, SIM) == pytest.approx(1 - np.abs(r - s).sum() / np.abs(r).sum())
    assert rsquared_score(REAL, REAL) == 1.0 and absolute_dev_explained(REAL, REAL) == 1.0


def test_degenerate_inputs():
    assert correlation_score([[1.0, 1.0]], [[0.0, 3.0]]) == 0.0
    assert rsquared_score([[0.0, 0.0]], [[1.0, 1.0]]) == 0.0
    with pytest.raises(ValueError):
        correlation_score([[1.0]], [[1.0, 2.0]])


def test_normalisation_matches_the_paper():
    assert normalise([-1.0, 0.0, 0.05, 0.5, 0.99, 1.0, 2.0], 1.0) == [0, 0, 0, 5, 9, 10, 10]
    assert normalise([1.0], 0.0) == [0]
    assert to_neuron_units([[10.0, 5.0]], 3.0) == [[3.0, 1.5]]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=3, max_size=40),
       st.floats(0.01, 100), st.floats(-10, 10))
def test_correlation_is_invariant_to_positive_affine_rescaling(values, scale, shift):
    real = [values]
    sim = [[v * 0.5 + np.sin(i) for i, v in enumerate(values)]]
    if np.std(sim[0]) < 1e-6 or np.std(values) < 1e-6:
        return
    rescaled = [[v * scale + shift for v in sim[0]]]
    assert correlation_score(real, sim) == pytest.approx(correlation_score(real, rescaled), abs=1e-6)


@given(st.lists(st.floats(-100, 100, allow_nan=False), max_size=64), st.floats(1e-3, 100))
def test_normalised_values_stay_in_0_10(values, vmax):
    assert all(0 <= v <= 10 for v in normalise(values, vmax))
