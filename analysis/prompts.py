"""Prompts of the explain -> simulate method (Bills et al. 2023), built from records.

The instructions follow the paper; the few-shot neurons are our own. Activations in prompts are integers
0–10 (``scoring.normalise``), written as ``token<TAB>value`` lines between ``<start>`` and ``<end>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from analysis.scoring import normalise

EXPLAIN_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short "
    "document. Look at the parts of the document the neuron activates for and summarize in a single sentence "
    "what the neuron is looking for. Don't list examples of words."
)
SIMULATE_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular thing in a short "
    "document. Look at an explanation of what the neuron does, and try to predict how it will fire on each "
    'token. The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates '
    "an unknown activation. Most activations will be 0."
)
LEAD = "the main thing this neuron does is find"


@dataclass(frozen=True)
class FewShot:
    tokens: list[str]
    values: list[int]
    explanation: str


# Written for this project: two short made-up neurons.
FEW_SHOT = [
    FewShot(tokens=["The", " bridge", " opened", " in", " 1932", " and", " closed", " in", " 1987", "."],
            values=[0, 0, 0, 1, 10, 0, 0, 1, 9, 0],
            explanation="four-digit years, especially after 'in'"),
    FewShot(tokens=["She", " poured", " water", " into", " the", " river", "'s", " muddy", " stream", "."],
            values=[0, 1, 8, 0, 0, 10, 2, 1, 9, 0],
            explanation="words about water and rivers"),
]


def format_tokens(tokens: list[str], values: list | None) -> str:
    """``<start>`` lines ``<end>``; ``values`` None writes 'unknown' for every token."""
    lines = [f"{t}\t{'unknown' if values is None else v}" for t, v in zip(tokens, values or [None] * len(tokens))]
    return "<start>\n" + "\n".join(lines) + "\n<end>\n"


def strong_tokens(tokens: list[str], values: list[int], threshold: int = 3) -> str:
    """The records again with the weak activations filtered out (as the paper's prompt does with zeros)."""
    pairs = [f"{t}\t{v}" for t, v in zip(tokens, values) if v >= threshold]
    return "Same activations, with the weak ones filtered out:\n<start>\n" + "\n".join(pairs) + "\n<end>\n"


def explain_prompt(records: list, max_activation: float) -> str:
    """The explainer prompt for records (objects with .tokens, .activations); ends with the lead to complete."""
    parts = [EXPLAIN_SYSTEM, ""]
    for i, ex in enumerate(FEW_SHOT, 1):
        parts += [f"Neuron {i}", "Activations:", format_tokens(ex.tokens, ex.values),
                  strong_tokens(ex.tokens, ex.values), f"Explanation of neuron {i} behavior: {LEAD} {ex.explanation}.", ""]
    n = len(FEW_SHOT) + 1
    parts += [f"Neuron {n}", "Activations:"]
    all_tokens, all_values = [], []
    for r in records:
        values = normalise(r.activations, max_activation)
        parts.append(format_tokens(r.tokens, values))
        all_tokens += list(r.tokens)
        all_values += values
    parts.append(strong_tokens(all_tokens, all_values))
    parts.append(f"Explanation of neuron {n} behavior: {LEAD}")
    return "\n".join(parts)


def simulate_prefix(explanation: str) -> str:
    """Everything before a record's '<start>' in the all-at-once simulation prompt."""
    parts = [SIMULATE_SYSTEM, ""]
    for i, ex in enumerate(FEW_SHOT, 1):
        parts += [f"Neuron {i}", f"Explanation of neuron {i} behavior: {LEAD} {ex.explanation}.", "Activations:",
                  format_tokens(ex.tokens, ex.values), ""]
    n = len(FEW_SHOT) + 1
    parts += [f"Neuron {n}", f"Explanation of neuron {n} behavior: {LEAD} {explanation.strip().rstrip('.')}.",
              "Activations:", ""]
    return "\n".join(parts)


def clean_explanation(text: str) -> str:
    """First sentence of a completion, without the lead if the model repeated it."""
    text = text.strip().split("\n")[0].strip()
    if text.lower().startswith(LEAD):
        text = text[len(LEAD):].strip()
    for stop in (". ", ".\t"):
        if stop in text:
            text = text.split(stop)[0]
    return text.rstrip(".").strip()


def _words(text: str) -> list[str]:
    import re

    return re.findall(r"[a-z0-9']+", text.lower())


PROMPT_PHRASES = ("neuron", "neural network", "activation", "explanation of", "behavior", "<start>", "<end>",
                  "looks for some particular thing", "main thing this", "same activations")
"""Words of the prompt's own scaffolding: an explanation made only of these restates the prompt."""


def degenerate_reason(text: str) -> str | None:
    """Why an explanation says nothing about its unit, or None: empty; a copy of a few-shot explanation (the same
    content words, or 80 % of them); or only the prompt's own words restated. Any explainer's text can be."""
    words = _words(text)
    if not words:
        return "empty"
    mine = set(words)
    for ex in FEW_SHOT:
        theirs = set(_words(ex.explanation))
        if mine == theirs or len(mine & theirs) >= 0.8 * max(len(mine), len(theirs)):
            return f"copies a few-shot explanation ({ex.explanation!r})"
    low = text.lower()
    scaffold = set(_words(EXPLAIN_SYSTEM + " " + LEAD + " explanation of neuron behavior activations same filtered"))
    if any(p in low for p in PROMPT_PHRASES) and mine <= scaffold | {str(i) for i in range(10)}:
        return "restates the prompt"
    return None
