"""Scorers beside simulation: how well an explanation separates a unit's examples, each number with a 95 % interval.

- ``embedding`` (offline): AUROC of the cosine similarity between the explanation's sentence vector and each
  example's, activating vs non-activating examples (``analysis.splits.classification_examples``).
- ``detection`` (API): the model is shown the explanation and batches of examples and says which contain what it
  describes; balanced accuracy, F1 and, where the endpoint returns log-probabilities, AUROC.
- ``fuzz`` (API): the activating examples shown twice, once with the tokens the unit fires on marked, once with as
  many other tokens marked; the model says which markings fit the explanation; the same metrics.
- ``output`` (offline): the unit clamped at its typical high value; AUROC of the change in log-probability of the
  tokens the explanation names against tokens of matched frequency it does not name (``analysis.scorers.output``).

Simulation (``analysis.evaluate``) stays where it is; its interval is ``metrics.bootstrap_correlation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from analysis.scorers import metrics as m

SCORERS = ("simulation", "embedding", "detection", "fuzz", "output")
"""What ``score --scorer`` takes."""
API_SCORERS = ("detection", "fuzz")
HEADLINE = {"embedding": "auroc", "detection": "balanced_accuracy", "fuzz": "balanced_accuracy", "output": "auroc"}
"""The metric each scorer's score is (the others are kept beside it)."""
CHANCE = {"auroc": 0.5, "balanced_accuracy": 0.5}
"""What a scorer that cannot tell the classes apart scores."""


def reads(scorer: str, explainer: str) -> bool:
    """Whether ``scorer`` scores explanations by ``explainer``: the output scorer every text explanation (any that
    names tokens); the others, which test what a unit fires on, the input-side ones (not ``output-*``, what it
    does downstream, nor a Neuron2Graph summary, which ``n2g`` scores)."""
    return explainer != "n2g" and (scorer == "output" or not explainer.startswith("output-"))


@dataclass(frozen=True)
class ScorerResult:
    """One scorer's verdict on one explanation."""

    scorer: str
    params: dict
    score: float | None
    """The headline metric (``HEADLINE``), None when it could not be computed (``error`` says why)."""
    lo: float | None
    hi: float | None
    """Its 95 % interval (stratified bootstrap over examples, seeded)."""
    metrics: dict = field(default_factory=dict)
    """Every metric computed: name -> {"value", "lo", "hi"}."""
    examples: list = field(default_factory=list)
    """Per example: window id, label, prediction (what AUROC ranks), verdict (0/1, or None) and what was shown."""
    error: str | None = None
    notes: list = field(default_factory=list)
    """What was left out and why (an endpoint without log-probabilities: no AUROC)."""
    usage: dict | None = None

    @property
    def metric(self) -> str:
        return HEADLINE[self.scorer]

    @property
    def n_pos(self) -> int:
        return sum(1 for e in self.examples if e["label"] == 1)

    @property
    def n_neg(self) -> int:
        return sum(1 for e in self.examples if e["label"] == 0)

    def to_json(self) -> dict:
        return {"scorer": self.scorer, "metric": self.metric, "score": self.score, "lo": self.lo, "hi": self.hi,
                "metrics": self.metrics, "params": self.params, "error": self.error, "notes": self.notes,
                "usage": self.usage, "n_pos": self.n_pos, "n_neg": self.n_neg, "examples": self.examples}


def failed(scorer: str, params: dict, why: str, usage: dict | None = None) -> ScorerResult:
    return ScorerResult(scorer, params, None, None, None, error=why, usage=usage)


def classification(scorer: str, params: dict, examples: list[dict], seed: int = 0, usage: dict | None = None,
                   notes: list | None = None) -> ScorerResult:
    """The metrics of ``examples`` (dicts with ``label``, ``prediction`` (None: not given) and ``verdict`` (None:
    not given)), each with its interval; the headline is ``HEADLINE[scorer]``."""
    notes = list(notes or [])
    y = np.array([e["label"] for e in examples], dtype=bool)
    if not y.any() or y.all():
        why = "no activating examples" if not y.any() else "no non-activating examples in its harvest"
        return ScorerResult(scorer, params, None, None, None, examples=examples, usage=usage, notes=notes,
                            error=f"{why}: the scorer needs both (a harvest with more random windows may have them)")
    out = {}
    given = [e for e in examples if e.get("prediction") is not None]
    yg = np.array([e["label"] for e in given], dtype=bool)
    if yg.any() and not yg.all():
        p = np.array([e["prediction"] for e in given], dtype=np.float64)
        out["auroc"] = (m.auroc(p, yg), *m.bootstrap_classification(m.auroc, p, yg, seed))
    elif scorer in API_SCORERS:
        notes.append("no AUROC: the endpoint returned no log-probabilities of the answers")
    judged = [e for e in examples if e.get("verdict") is not None]
    if judged:
        v, yj = np.array([e["verdict"] for e in judged], dtype=bool), np.array([e["label"] for e in judged], bool)
        for name, fn in (("balanced_accuracy", m.balanced_accuracy), ("f1", m.f1)):
            out[name] = (fn(v, yj), *m.bootstrap_classification(fn, v, yj, seed))
        if len(judged) < len(examples):
            notes.append(f"{len(examples) - len(judged)} of {len(examples)} examples got no verdict (their batch "
                         "failed); the metrics count the others")
    metrics = {k: {"value": a, "lo": b, "hi": c} for k, (a, b, c) in out.items()}
    head = metrics.get(HEADLINE[scorer])
    if head is None or head["value"] is None:
        return ScorerResult(scorer, params, None, None, None, metrics, examples, usage=usage, notes=notes,
                            error=f"no {HEADLINE[scorer].replace('_', ' ')}: " + ("; ".join(notes) or "no verdicts"))
    return ScorerResult(scorer, params, head["value"], head["lo"], head["hi"], metrics, examples, usage=usage,
                        notes=notes)
