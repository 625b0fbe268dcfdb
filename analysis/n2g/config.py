"""The parameters of Neuron2Graph fitting (torch-free: the CLI's parser reads their defaults)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class N2GConfig:
    keep: float = 0.5
    """Pruning keeps the shortest preceding context whose activation is at least this fraction of the record's."""
    importance: float = 0.25
    """A context token is important when masking it drops the activation by at least this fraction."""
    max_context: int = 12
    """Look back at most this many tokens from the activating token (24 took 2x the time for no better F1 on
    the embedded model: bench/RESULTS.md)."""
    max_important: int = 2
    """Keep at most this many context tokens (the most important ones); the rest become ANY, so a pattern
    generalises beyond the exact text it was fitted on."""
    augment: bool = True
    """Substitute the activating token and the important tokens with plausible alternatives (from the subject
    model as a causal LM) and record what the unit does on them."""
    candidates: int = 3
    """Next-token candidates per substituted position. Where there are more than ``substitutes``, they are rescored
    by the likelihood of the text that follows them (whole-model passes); 4 candidates rescored to 3 gave the same
    F1 as 3 unrescored at 1.2-1.4x the cost on the embedded model (bench/RESULTS.md)."""
    substitutes: int = 3
    """Candidates kept per position (after rescoring, where there is any)."""
    every_firing: int = 0
    """Also fit up to this many more tokens of each train record that fire (activation >= the firing threshold,
    ``analysis.n2g.evaluate.FIRING_FRACTION`` x the unit's max), highest first, besides the record's max: a record
    often fires on several tokens, and a graph fitted on the max alone cannot predict the others."""
    extra_records: int = 10
    """Also fit up to this many top records past the first 20 (``analysis.splits.N2G_HEAD``: the default harvest
    keeps 30; a harvest of top-k 20 has none to give), at their max, with no probe at all: the window up to the max
    (``max_context`` tokens back), every token kept, cut by ``generalise``, whose cuts are judged on them too. The
    held-out set stays the first 20's 2::4 + 3::4, and the token-lookup baseline is fitted on the same train
    records. With 10, on four fresh samples: firing F1 over token-lookup at layer 29 from +0.02-0.035 to
    +0.05-0.07; at layer 15 it varies by sample (+0.01-0.06 with or without). Over five fresh samples (384
    neurons per layer): +0.056 at layer 29, +0.034 at layer 15. Pruning them first gave the same F1
    for ~1.25x the probe tokens, saliency or augmentation on them more for no better (bench/RESULTS.md)."""
    generalise: bool = True
    """Cut each firing pattern to the part of it that predicts the train records best (see generalise)."""

    def to_json(self) -> dict:
        return dict(self.__dict__)
