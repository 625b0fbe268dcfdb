"""Explain -> simulate -> score for one unit: scored simulations on the held-out record sets of analysis/splits.py
(a scored record is never one the explainer saw).
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.scoring import absolute_dev_explained, correlation_score, rsquared_score, to_neuron_units
from analysis.splits import explainer_train


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

    def to_json(self) -> dict:
        """Every number the scores are computed from (see analysis/scoring.py), so they recompute from it alone."""
        return {"explanation": self.explanation, "simulator": self.simulator, "set": self.scoring_set,
                "score": self.score, "rsquared": self.rsquared, "absolute_dev_explained": self.absolute_dev_explained,
                "max_activation": self.max_activation, "simulated_to_neuron_units": "simulated / 10 * max_activation",
                "error": self.error, "simulator_params": self.params,
                "records": [{"window_id": w, "tokens": t, "real": r, "simulated": s}
                            for w, t, r, s in zip(self.window_ids, self.tokens, self.real,
                                                  self.simulated or [None] * len(self.real))]}


def score_simulation(simulator, explanation: str, records: list, max_activation: float,
                     scoring_set: str) -> ScoredSimulation:
    result = simulator.simulate(explanation, records)
    real = [list(r.activations) for r in records]
    base = dict(explanation=explanation, simulator=result.simulator, params=result.params, scoring_set=scoring_set,
                window_ids=[r.window_id for r in records], tokens=[list(r.tokens) for r in records], real=real,
                max_activation=max_activation)
    if result.simulated is None:
        return ScoredSimulation(**base, simulated=None, score=None, rsquared=None, absolute_dev_explained=None,
                                error=result.error)
    in_units = to_neuron_units(result.simulated, max_activation)
    return ScoredSimulation(**base, simulated=result.simulated, score=correlation_score(real, result.simulated),
                            rsquared=rsquared_score(real, in_units),
                            absolute_dev_explained=absolute_dev_explained(real, in_units))


def token_lookup_simulator(rec):
    """The token-lookup baseline for a unit: means from the harvest's token table, completed by the train records'."""
    from analysis.explain import token_means
    from analysis.simulate import TokenLookupSimulator

    table = {t: m for t, _s, m, _c in rec.top_tokens}
    for (tid, _t), (m, _c) in token_means(explainer_train(rec)).items():
        table.setdefault(tid, m)
    return TokenLookupSimulator(table, default=rec.stats.mean, max_activation=rec.stats.max)
