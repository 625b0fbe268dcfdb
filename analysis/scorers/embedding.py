"""The embedding scorer (offline): does an explanation read closer to a unit's activating examples than to its
non-activating ones? AUROC of the cosine similarity between the explanation's sentence vector and each example's
(``analysis.search.ENCODER``), activating examples the positive class. An example's vector is its window's text
encoded once, and the same for every unit whose examples include that window."""

from __future__ import annotations

import numpy as np

from analysis.scorers import ScorerResult, classification, failed
from analysis.splits import classification_examples

PARAMS = {"encoder": "all-MiniLM-L6-v2", "examples": "classification_examples"}


def window_text(record) -> str:
    """What the encoder reads of an example: its window's tokens as text."""
    return "".join(record.tokens)


def examples_of(rec) -> list[tuple[object, int]]:
    """(record, label) of a unit's classification examples: activating (1), then non-activating (0)."""
    activating, non = classification_examples(rec)
    return [(r, 1) for r in activating] + [(r, 0) for r in non]


def score_embedding(explanation: str, vector, rec, window_vectors: dict) -> ScorerResult:
    """``explanation`` (its unit vector ``vector``) of the unit ``rec`` scored against its examples' window vectors
    (window id -> unit vector; every example's must be there)."""
    if not explanation.strip():
        return failed("embedding", PARAMS, "the explanation is empty")
    pairs = examples_of(rec)
    sims = (np.stack([window_vectors[r.window_id] for r, _ in pairs]) @ np.asarray(vector, np.float32)
            if pairs else np.zeros(0))
    examples = [{"window_id": r.window_id, "label": y, "prediction": round(float(s), 6), "verdict": None}
                for (r, y), s in zip(pairs, sims)]
    return classification("embedding", PARAMS, examples)
