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
    """Layer."""
    neuron: int
    """The unit's index."""
    text: str
    """The text."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    mode: str = "zero"
    """zero, mean (the unit's mean over its harvest) or value."""
    value: float | None = None
    """The value for --mode value."""
    device: str = "cpu"
    """Cpu or cuda."""


@dataclass(frozen=True)
class SteerJob:
    layer: int
    """Layer."""
    neuron: int
    """The unit's index."""
    prompt: str
    """The prompt."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    clamp: float | None = None
    """Set a neuron to this × its max (a feature: add this × its max along its decoder direction)."""
    scale: float | None = None
    """Or multiply the unit's activation by this (1 changes nothing)."""
    max_new_tokens: int = 32
    """Tokens to generate."""
    temperature: float = 0.0
    """0: greedy."""
    seed: int = 0
    """Sampling seed."""
    device: str = "cpu"
    """Cpu or cuda."""


def _unit_and_model(db: Path, model: str, unit: UnitId, device: str):
    """(the unit's record, the loaded subject, its dictionary or None), checking that the cache knows the unit."""
    from analysis.jobs.reads import cached_model, load_dictionary_of, unit_record
    from analysis.models import load_cached_subject
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        rec = unit_record(store, model, unit)
        info = cached_model(store, model)
        sae = load_dictionary_of(store, unit.source)
    subject = load_cached_subject(info, device)
    return rec, subject, (sae.to(subject.device) if sae is not None else None)


def ablate_text(job: AblateJob, db: Path, subject=None, sae=None, rec=None):
    """analysis.causal.Ablation of the job's unit on its text (``subject``/``sae``/``rec``: already loaded)."""
    from analysis.causal import ablate_unit

    if not job.text.strip():
        raise UserError("the text is empty")
    unit = UnitId(job.source, job.layer, job.neuron)
    if subject is None:
        rec, subject, sae = _unit_and_model(db, job.model, unit, job.device)
    return ablate_unit(subject, subject.tokenize(job.text), unit, job.mode, rec.stats if rec is not None else None,
                       job.value, sae)


def steer_prompt(job: SteerJob, db: Path, subject=None, sae=None, rec=None):
    """analysis.causal.Steering of the job's prompt."""
    from analysis.causal import steer_unit

    if not job.prompt.strip():
        raise UserError("the prompt is empty")
    unit = UnitId(job.source, job.layer, job.neuron)
    if subject is None:
        rec, subject, sae = _unit_and_model(db, job.model, unit, job.device)
    return steer_unit(subject, subject.tokenize(job.prompt), unit, rec.stats, job.clamp, job.scale, sae,
                      job.max_new_tokens, job.temperature, job.seed)


@dataclass(frozen=True)
class EffectsJob:
    layer: int
    """Layer."""
    neurons: str
    """Unit indices, e.g. 0-99 or 3,5,8."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    mode: str = "zero"
    """zero or mean."""
    top: int = 10
    """Top-activating records per unit."""
    random: int = 10
    """Random records per unit."""
    device: str = "cpu"
    """Cpu or cuda."""
    force: bool = False
    """Measure again units that have effects of this mode."""


@dataclass
class EffectsTask:
    """Ablation effects of a chunk of units over their records (an executor task)."""

    model: object
    """analysis.executor.ModelHandle"""
    sae: object
    mode: str
    top: int
    random: int

    def __call__(self, recs: list) -> list:
        """[(analysis.types.Effects, seconds)] in the records' order."""
        import time

        from analysis.causal import ablation_edit, effects

        subject = self.model.get()
        sae = self.sae.to(subject.device) if self.sae is not None else None
        out = []
        for rec in recs:
            t0 = time.time()
            e = effects(subject, rec.unit, ablation_edit(self.mode, mean=rec.stats.mean), self.mode,
                        rec.most_positive_activation_records[:self.top], rec.random_sample[:self.random], sae)
            out.append((e, time.time() - t0))
        return out


EFFECTS_CHUNK = 4
"""Units per effects task and per write (~30 s of work here)."""


def effects_of(job: EffectsJob, db: Path, progress=None, executor=None) -> list:
    """Measure and store the ablation effect of each unit over its records (resumable), a few units per task on
    ``executor`` (default this process); the new analysis.types.Effects."""
    from analysis.causal import MODES
    from analysis.executor import LOCAL, ModelHandle
    from analysis.jobs.reads import cached_model, load_dictionary_of, n_units, unit_records
    from analysis.jobs.specs import parse_units
    from analysis.models import load_cached_subject
    from analysis.progress import Progress
    from cache.store import open_store

    progress = progress or Progress()
    executor = executor or LOCAL
    if job.mode not in MODES or job.mode == "value":
        raise UserError("effects ablate to zero or to the unit's mean: --mode zero|mean")
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        units = parse_units(job.neurons, n_units(store, info, job.source, job.layer),
                            "neurons" if job.source == MLP else "features", allow_all=True)
        run = store.runs.find(job.model, job.layer, source=job.source)
        done = set() if job.force or run is None else store.effects.units(run.run_id, job.layer, job.mode, job.source)
        sae = load_dictionary_of(store, job.source)
    todo = [u for u in units if u not in done]
    if not todo:
        progress.note(f"effects: all {len(units)} unit(s) done")
        return []
    recs = unit_records(db, job.model, job.layer, todo, job.source)
    handle = ModelHandle(info.name, info.model_id, job.device)
    if executor.local:
        handle.loaded = load_cached_subject(info, job.device)
    task = EffectsTask(handle, sae, job.mode, job.top, job.random)
    chunks = [[recs[u] for u in todo[b : b + EFFECTS_CHUNK]] for b in range(0, len(todo), EFFECTS_CHUNK)]
    out = []
    bar = progress.bar(len(todo), f"effects L{job.layer} ({job.mode} ablation)", unit="unit")
    for chunk, measured in zip(chunks, executor.map(task, chunks)):
        with open_store(db) as store:
            for rec, (e, seconds) in zip(chunk, measured):
                store.effects.put(rec.run_id, e, {"top": job.top, "random": job.random}, seconds)
        out += [e for e, _s in measured]
        bar.update(len(chunk))
    bar.close()
    return out
