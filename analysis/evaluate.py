"""Explain -> simulate -> score for one unit: scored simulations on the held-out record sets of analysis/splits.py
(a scored record is never one the explainer saw).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.scoring import absolute_dev_explained, correlation_score, rsquared_score, to_neuron_units
from analysis.splits import calibration, explainer_train, scoring_records


@dataclass
class ScoredSimulation:
    explanation: str
    simulator: str
    params: dict
    scoring_set: str
    window_ids: list[int]
    tokens: list[list[str]]
    real: list[list[float]]
    simulated: list[list[float]] | None
    """0–10 scale, as the simulator produced them; None if the simulation failed."""
    score: float | None
    rsquared: float | None
    absolute_dev_explained: float | None
    max_activation: float
    """The unit's max activation, which maps simulated values to neuron units for R² and absolute deviation."""
    error: str | None = None
    calibration: dict | None = None
    """The calibrated simulator (the paper's): ``slope``, ``intercept`` of the least-squares line real ≈ slope ·
    simulated + intercept over the calibration records (``records``: their window ids, real and simulated values;
    disjoint from the explainer's and the scored ones), ``n_tokens``, and R² / absolute deviation explained of the
    scored records through that line; None when not fitted."""
    usage: dict | None = None
    """What the simulator's API calls cost, calibration records included (``analysis.api.Usage.to_json``); None
    for a local simulator."""
    lo: float | None = None
    hi: float | None = None
    """The score's 95 % interval (``analysis.scorers.metrics.bootstrap_correlation``: resampled records)."""

    def to_json(self) -> dict:
        """Every number the scores are computed from (see analysis/scoring.py), so they recompute from it alone."""
        return {"explanation": self.explanation, "simulator": self.simulator, "set": self.scoring_set,
                "score": self.score, "lo": self.lo, "hi": self.hi, "rsquared": self.rsquared, "absolute_dev_explained": self.absolute_dev_explained,
                "max_activation": self.max_activation, "simulated_to_neuron_units": "simulated / 10 * max_activation",
                "error": self.error, "simulator_params": self.params, "calibration": self.calibration,
                "usage": self.usage,
                "records": [{"window_id": w, "tokens": t, "real": r, "simulated": s}
                            for w, t, r, s in zip(self.window_ids, self.tokens, self.real,
                                                  self.simulated or [None] * len(self.real))]}


def calibrate(simulator, explanation: str, records: list, real: list[list[float]], simulated: list[list[float]]
              ) -> dict | None:
    """Fit real ≈ slope · simulated + intercept on ``records`` (simulated now) and score ``simulated`` (of the scored
    records, ``real``) through it; None if the calibration simulation fails or is constant."""
    import numpy as np

    result = simulator.simulate(explanation, records)
    if result.simulated is None:
        return None
    usage = {"usage": result.usage} if result.usage is not None else {}
    x = np.asarray([v for r in result.simulated for v in r], dtype=np.float64)
    y = np.asarray([v for r in records for v in r.activations], dtype=np.float64)
    if x.size < 2 or np.std(x) == 0:
        return None  # (its API usage is lost with it: counted in the client's total only)
    slope, intercept = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
    fitted = [[float(slope * v + intercept) for v in r] for r in simulated]
    return {**usage, "slope": float(slope), "intercept": float(intercept), "n_tokens": int(x.size),
            "rsquared": rsquared_score(real, fitted), "absolute_dev_explained": absolute_dev_explained(real, fitted),
            "records": [{"window_id": r.window_id, "real": list(r.activations), "simulated": sim}
                        for r, sim in zip(records, result.simulated)]}


def score_simulation(simulator, explanation: str, records: list, max_activation: float,
                     scoring_set: str, calibration_records: list | None = None) -> ScoredSimulation:
    """Simulate and score on ``records``; with ``calibration_records``, also the calibrated R² and absolute
    deviation (``calibrate``)."""
    result = simulator.simulate(explanation, records)
    real = [list(r.activations) for r in records]
    base = dict(explanation=explanation, simulator=result.simulator, params=result.params, scoring_set=scoring_set,
                window_ids=[r.window_id for r in records], tokens=[list(r.tokens) for r in records], real=real,
                max_activation=max_activation)
    if result.simulated is None:
        return ScoredSimulation(**base, simulated=None, score=None, rsquared=None, absolute_dev_explained=None,
                                error=result.error, usage=result.usage)
    in_units = to_neuron_units(result.simulated, max_activation)
    fit = (calibrate(simulator, explanation, calibration_records, real, result.simulated)
           if calibration_records else None)
    usage = result.usage
    if fit and fit.get("usage") and usage is not None:
        from analysis.api import Usage

        usage = (Usage(**usage) + Usage(**fit["usage"])).to_json()
    from analysis.scorers.metrics import bootstrap_correlation

    lo, hi = bootstrap_correlation(real, result.simulated)
    return ScoredSimulation(**base, simulated=result.simulated, score=correlation_score(real, result.simulated),
                            lo=lo, hi=hi,
                            rsquared=rsquared_score(real, in_units),
                            absolute_dev_explained=absolute_dev_explained(real, in_units), calibration=fit,
                            usage=usage)


def score_explanation(simulator, explanation: str, rec, scoring_set: str, calibrate: bool = False
                      ) -> ScoredSimulation:
    """``explanation`` of a unit (``rec``: its UnitRecord) simulated and scored on its ``scoring_set`` records
    (analysis/splits.py), against its max activation; ``calibrate``: also on its calibration records."""
    return score_simulation(simulator, explanation, scoring_records(rec, scoring_set), rec.stats.max, scoring_set,
                            calibration(rec) if calibrate else None)


def token_lookup_simulator(rec):
    """The token-lookup baseline for a unit: means from the harvest's token table, completed by the train records'."""
    from analysis.explain import token_means
    from analysis.simulate import TokenLookupSimulator

    table = {t: m for t, _s, m, _c in rec.top_tokens}
    for (tid, _t), (m, _c) in token_means(explainer_train(rec)).items():
        table.setdefault(tid, m)
    return TokenLookupSimulator(table, default=rec.stats.mean, max_activation=rec.stats.max)
