"""Jobs: ablate a unit on text, steer a generation with it (analysis/causal.py), reading the unit's mean and max
from its harvest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.types import MLP, UnitId, UserError


@dataclass(frozen=True)
class AblateJob:
    layer: int
    neuron: int
    text: str
    model: str = DEFAULT_MODEL
    source: str = MLP
    mode: str = "zero"
    """zero, mean (the unit's mean over its harvest) or value."""
    value: float | None = None
    device: str = "cpu"


@dataclass(frozen=True)
class SteerJob:
    layer: int
    neuron: int
    prompt: str
    model: str = DEFAULT_MODEL
    source: str = MLP
    clamp: float | None = None
    """Set a neuron to this × its max (a feature: add this × its max along its decoder direction)."""
    scale: float | None = None
    """Or multiply the unit's activation by this (1 changes nothing)."""
    max_new_tokens: int = 32
    temperature: float = 0.0
    """0: greedy."""
    seed: int = 0
    device: str = "cpu"


def _unit_and_model(db: Path, model: str, unit: UnitId, device: str):
    """(the unit's record, the loaded subject, its dictionary or None), checking that the cache knows the unit."""
    from analysis.jobs.common import cached_model, load_cached_subject, load_dictionary_of, unit_record
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        rec = unit_record(store, model, unit)
        info = cached_model(store, model)
        sae = load_dictionary_of(store, unit.source)
    subject = load_cached_subject(info, device)
    return rec, subject, (sae.to(subject.device) if sae is not None else None)


def ablate_text(job: AblateJob, db: Path, subject=None, sae=None, rec=None):
    """analysis.causal.Ablation of the job's unit on its text (``subject``/``sae``/``rec``: already loaded)."""
    from analysis.causal import ablate, ablation_edit

    if not job.text.strip():
        raise UserError("the text is empty")
    unit = UnitId(job.source, job.layer, job.neuron)
    if subject is None:
        rec, subject, sae = _unit_and_model(db, job.model, unit, job.device)
    edit = ablation_edit(job.mode, mean=rec.stats.mean if rec is not None else None, value=job.value)
    return ablate(subject, subject.tokenize(job.text), unit, edit, sae)


def steer_prompt(job: SteerJob, db: Path, subject=None, sae=None, rec=None):
    """analysis.causal.Steering of the job's prompt."""
    from analysis.causal import steer, steering_edit

    if not job.prompt.strip():
        raise UserError("the prompt is empty")
    unit = UnitId(job.source, job.layer, job.neuron)
    if subject is None:
        rec, subject, sae = _unit_and_model(db, job.model, unit, job.device)
    edit = steering_edit(unit, rec.stats.max, clamp=job.clamp, scale=job.scale)
    return steer(subject, subject.tokenize(job.prompt), unit, edit, sae, job.max_new_tokens, job.temperature, job.seed)
