"""The build's run: plan, then each stage layer by layer through its own job (which skips finished work, so a
killed build resumes), recording the seconds per unit each took for the next plan."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from analysis.config import HarvestConfig
from analysis.executor import ExecutorConfig, ProcessExecutor, cores, make_executor
from analysis.n2g.config import N2GConfig
from analysis.progress import Progress
from analysis.splits import N2G_HEAD
from analysis.types import UserError
from analysis.jobs.build.plan import (CHEAP, LENSES, MIN_MEASURED, BuildJob, BuildSummary, _once, db_bytes, measured_costs,
                                      parse_budget, plan, plan_lines, record_cost)
from analysis.jobs.build.status import BuildStatus, StatusProgress, resume_command, status_file

def _harvest_job(job: BuildJob, layers: str):
    from analysis.jobs.harvest import HarvestJob

    return HarvestJob(model=job.model, corpus=job.corpus, layers=layers, max_tokens=job.max_tokens,
                      device=job.device, skip_if_cached=True, max_memory=job.max_memory,
                      config=HarvestConfig(top_k=job.top_k))


def _subject_shape(job: BuildJob, db: Path):
    """(ModelInfo, tokens the harvest will read, the top-k of the cached harvest the harvest stage reuses, else None
    (it has work to do)): from the cache when it holds that run, else by loading the model and windowing the corpus
    once."""
    from analysis.jobs.specs import parse_layers
    from analysis.jobs.harvest import cached_run
    from cache.store import open_store

    if Path(db).exists():
        with open_store(db, read_only=True) as store:
            info = store.catalog.model(job.model)
            run = cached_run(store, _harvest_job(job, job.layers)) if info is not None else None
            if run is not None:
                parse_layers(job.layers, info.n_layers)
                return info, run.n_tokens, run.params.get("top_k", N2G_HEAD)
    from analysis.corpus import load_corpus, make_windows, select_windows
    from analysis.models import load_model

    subject = load_model(job.model, device=job.device)
    cfg = HarvestConfig()
    windows = list(make_windows(load_corpus(job.corpus).documents, subject.tokenizer, cfg.seq_len))
    windows = select_windows(windows, job.max_tokens, seed=cfg.seed)
    return subject.info, sum(len(w.token_ids) for w in windows), None


def build(job: BuildJob, db: Path, progress: Progress = Progress()) -> BuildSummary:
    """Plan, then run every stage (resumable: each stage's job skips what is done). While it runs, the build's
    status is in ``<db>.build.json`` (``read_status``: the viewer's Cache page shows it)."""
    from analysis.jobs.specs import fmt_layers, parse_layers, parse_units

    budget_s = parse_budget(job.budget)
    check_device(job.device)
    config = ExecutorConfig(job.executor, job.ray_address, job.ray_cpus)  # checks itself
    info, n_tokens, kept = _subject_shape(job, db)
    harvested = kept is not None
    if harvested and kept != job.top_k:
        progress.note(f"{db}'s harvest kept {kept} top records per unit (not --top-k {job.top_k}): it is used as "
                      f"it is; a harvest with another top-k goes into another --db")
    asked = parse_units(job.expensive_neurons, info.d_mlp, allow_all=True)
    units = {lens: info.d_mlp if lens in CHEAP else len(asked) for lens in LENSES}  # topics: per neuron, all modes
    costs = measured_costs(db, f"{info.model_id}|{job.device}")
    stages, dropped = plan(job, info.n_layers, units, n_tokens, costs, budget_s, ("harvest",) if harvested else (),
                           measured_costs(db, f"{info.model_id}|disk"), _once(db, job.lenses))
    for line in plan_lines(stages, dropped, budget_s):
        progress.note(line)
    if not harvested and "harvest" in job.lenses:
        from analysis.jobs.harvest_plan import memory_line

        progress.note(memory_line(_harvest_job(job, job.layers), info, parse_layers(job.layers, info.n_layers),
                                  config.cpus or 1 if config.kind == "ray" else 1))
    if job.plan_only:
        return BuildSummary(stages, dropped)
    spent: dict[str, float] = {}
    measured: dict[str, list] = {}  # lens -> [new units, seconds, bytes] of this build
    status = BuildStatus.start(stages, resume_command(job, db), None if len(asked) == info.d_mlp else asked)
    watched = StatusProgress(progress, status, status_file(db))
    watched.save()
    executor = make_executor(config, job.device)
    # the topics stage's worker processes (local executor), started once for all its layers
    processes = ProcessExecutor(cores()) if executor.local and cores() > 1 else None
    where = "" if executor.local else f" on Ray ({executor.workers} workers)"
    run = StageRun(job, db, info, watched, executor, processes)
    bar = progress.bar(sum(len(s.layers) for s in stages), "build" + where, unit="stage-layer")
    try:
        for i, stage in enumerate(stages):
            layers = stage.layers if stage.lens != "harvest" else [None]
            for layer in layers:
                bar.set_description(f"build{where}: {stage.lens}" + (f" L{layer}" if layer is not None else ""))
                status.current = (i, layer)
                watched.save()
                t0, size0 = time.monotonic(), db_bytes(db)
                new, setup = STAGES[stage.lens](run, layer, fmt_layers(stage.layers))
                took, grew = time.monotonic() - t0, db_bytes(db) - size0
                spent[stage.lens] = spent.get(stage.lens, 0.0) + took
                if new:  # measured over the stage so far (a file grows in blocks: one layer alone says little)
                    m = measured.setdefault(stage.lens, [0, 0.0, 0])
                    m[0] += new
                    m[1] += took - setup  # a one-time cost (the topics' statistics) is no cost per unit
                    m[2] += grew if stage.lens != "harvest" else grew * new / (len(stage.layers) * info.d_mlp)
                    if m[0] >= MIN_MEASURED.get(stage.lens, 8):  # enough new work to be a measurement
                        if executor.local:  # this machine's single-process costs
                            record_cost(db, f"{info.model_id}|{job.device}", stage.lens, m[1] / m[0])
                        record_cost(db, f"{info.model_id}|disk", stage.lens, max(m[2], 0) / m[0])
                status.stages[i].done.extend(stage.layers if layer is None else [layer])
                status.stages[i].spent_s += took
                bar.update(len(stage.layers) if layer is None else 1)
            if processes is not None:
                processes.close()
        status.finished = time.time()
    except BaseException as exc:
        status.error = (f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)[:500]
        raise
    finally:
        status.current, status.step = None, None
        watched.save()
        bar.close()
        if processes is not None:
            processes.close()
        executor.close()
    return BuildSummary(stages, dropped, spent)


def check_device(device: str) -> None:
    """A clear message, before any work, when a GPU is asked for and there is none here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")


@dataclass(frozen=True)
class StageRun:
    """What every stage of one build runs with."""

    job: BuildJob
    db: Path
    info: object
    """The model's ``ModelInfo``."""
    progress: Progress
    executor: object
    processes: object = None
    """The topics stage's worker processes, kept from layer to layer (None: in this process)."""

    def units(self, lens: str) -> str:
        """The unit spec a lens builds per layer: every unit for the cheap lenses, else ``expensive_neurons``."""
        return "all" if lens in CHEAP else self.job.expensive_neurons


def _harvest(r: StageRun, layer: None, layers: str) -> tuple[int, float]:
    from analysis.jobs.harvest import harvest

    s = harvest(_harvest_job(r.job, layers), r.db, r.progress, r.executor)
    return (s.n_tokens if s.status == "done" else 0), 0.0


def _explain(r: StageRun, layer: int, units: str, explainer: str, records=None) -> int:
    from analysis.jobs.explain import ExplainJob, explain

    job = ExplainJob(layer=layer, neurons=units, model=r.job.model, explainer=explainer, device=r.job.device,
                     api=r.job.api)
    return len(explain(job, r.db, r.progress, r.executor, records).explained)


def _score(r: StageRun, layer: int, units: str, simulator: str, records=None, scorer: str = "simulation") -> int:
    from analysis.jobs.score import ScoreJob, score

    job = ScoreJob(layer=layer, neurons=units, model=r.job.model, scorer=scorer, simulator=simulator,
                   device=r.job.device, api=r.job.api)
    return len(score(job, r.db, r.progress, r.executor, records).results)


def _baselines(r: StageRun, layer: int, layers: str) -> tuple[int, float]:
    """Token-lookup explanations, their baseline scores and embedding scores (offline), from one read of the
    layer's records; and output-weights explanations (one matrix product per chunk of units)."""
    from analysis.jobs.reads import unit_records

    records = unit_records(r.db, r.job.model, layer, list(range(r.info.d_mlp)))
    explained = _explain(r, layer, "all", "token-lookup", records)
    _explain(r, layer, "all", "output-weights", records)
    scored = _score(r, layer, "all", "token-lookup", records)
    _score(r, layer, "all", "token-lookup", records, scorer="embedding")
    return max(scored, explained), 0.0


def _topics(r: StageRun, layer: int, layers: str) -> tuple[int, float]:
    from analysis.jobs.specs import parse_units
    from analysis.jobs.topics import TopicsJob, topics

    units = r.units("topics")
    s = topics(TopicsJob(layer=layer, neurons=units, model=r.job.model, device=r.job.device), r.db, r.progress,
               r.executor, with_sets=False, processes=r.processes)
    # in neurons' worth of (mode, unit) pairs
    return round(len(parse_units(units, r.info.d_mlp, allow_all=True)) * s.computed / max(s.pairs, 1)), s.stats_s


def _n2g(r: StageRun, layer: int, layers: str) -> tuple[int, float]:
    from analysis.jobs.n2g import N2GJob, n2g

    job = N2GJob(layer=layer, neurons=r.units("n2g"), model=r.job.model, device=r.job.device,
                 config=N2GConfig(extra_records=r.job.n2g_extra_records))
    return n2g(job, r.db, r.progress, executor=r.executor).built, 0.0


def _effects(r: StageRun, layer: int, layers: str) -> tuple[int, float]:
    from analysis.jobs.causal import EffectsJob, effects_of

    job = EffectsJob(layer=layer, neurons=r.units("effects"), model=r.job.model, device=r.job.device)
    return len(effects_of(job, r.db, r.progress, r.executor)), 0.0


STAGES: dict[str, Callable[[StageRun, int | None, str], tuple[int, float]]] = {
    "harvest": _harvest,
    "baselines": _baselines,
    "topics": _topics,
    "n2g": _n2g,
    "effects": _effects,
    "explain": lambda r, layer, layers: (_explain(r, layer, r.units("explain"), r.job.explainer), 0.0),
    "score": lambda r, layer, layers: (_score(r, layer, r.units("score"), r.job.simulator), 0.0),
}
"""Each lens's stage: run it on one layer (the harvest: on all its layers at once, ``layers``) and return the units
done now and the seconds of it that were a one-time cost (``PROJECT_VM_ONCE``)."""
