"""Scores of a simulation against real activations (pure functions; OpenAI's definitions).

``real`` and ``simulated`` are per-record lists of per-token values. Simulated values are on the 0–10 scale of
the prompts; R² and absolute deviation compare them in neuron units, after the inverse of the prompt's
normalisation (``sim / 10 * max_activation``). The correlation score does not depend on that choice.
"""

from __future__ import annotations

import math

import numpy as np


def _flat(records: list[list[float]]) -> np.ndarray:
    return np.asarray([v for r in records for v in r], dtype=np.float64)


def correlation_score(real: list[list[float]], simulated: list[list[float]]) -> float:
    """Pearson r pooled over all tokens of all records (not the mean of per-record r). 0 if either is constant."""
    x, y = _flat(real), _flat(simulated)
    if x.size != y.size:
        raise ValueError(f"{x.size} real values but {y.size} simulated")
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def rsquared_score(real: list[list[float]], predicted: list[list[float]]) -> float:
    """1 − mean((real − predicted)²) / mean(real²): the fraction of the activations' power explained."""
    x, y = _flat(real), _flat(predicted)
    denom = float(np.mean(x * x))
    return 1.0 - float(np.mean((x - y) ** 2)) / denom if denom > 0 else 0.0


def absolute_dev_explained(real: list[list[float]], predicted: list[list[float]]) -> float:
    """1 − mean|real − predicted| / mean|real|."""
    x, y = _flat(real), _flat(predicted)
    denom = float(np.mean(np.abs(x)))
    return 1.0 - float(np.mean(np.abs(x - y))) / denom if denom > 0 else 0.0


def to_neuron_units(simulated: list[list[float]], max_activation: float) -> list[list[float]]:
    """Inverse of the prompt normalisation: 0–10 back to activations."""
    return [[v / 10.0 * max_activation for v in r] for r in simulated]


def normalise(activations: list[float], max_activation: float) -> list[int]:
    """The prompt's integer scale: min(10, floor(10 · relu(a) / max)); all 0 if max <= 0."""
    if not max_activation > 0:
        return [0 for _ in activations]
    return [min(10, int(math.floor(10 * max(a, 0.0) / max_activation))) for a in activations]
