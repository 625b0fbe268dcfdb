"""Job: build a model's lenses in one resumable command.

A plan comes first: per stage its layers, units, estimated time (seconds per unit measured by earlier builds on
this machine, ``<db>.costs.json``; else the project VM's numbers from bench/RESULTS.md, and said so) and disk.
``budget`` keeps the cheap lenses for every layer and gives the expensive ones as many layers as fit, spread
over the depth. Then each stage runs layer by layer in dependency order through its own job, which skips work
already done (so a killed build resumes), and the seconds per unit it took are recorded for the next plan.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from analysis.api import ApiConfig
from analysis.config import DEFAULT_CORPUS, DEFAULT_MODEL
from analysis.executor import ExecutorConfig, make_executor
from analysis.progress import Progress
from analysis.types import UserError

LENSES = ("harvest", "baselines", "topics", "n2g", "effects", "explain", "score")
"""In dependency order: everything reads the harvest; score reads the explanations."""
DEFAULT_LENSES = ("harvest", "baselines", "topics", "n2g")
CHEAP = ("harvest", "baselines", "topics")
"""Built for every asked layer whatever the budget."""

PROJECT_VM = {"harvest": 1 / 597, "baselines": 0.027, "topics": 0.70, "n2g": 2.5, "effects": 7.0,
              "explain": 5.4, "score": 10.0}
"""Seconds per unit on the project's 2-core VM, fp32, SmolLM2-135M (bench/RESULTS.md): harvest per corpus token
through all 30 layers; baselines = token-lookup explanation + baseline score; n2g at depth with augmentation;
effects over 20 records; explain / score with the local backends (score with calibration)."""
BUDGET_STOP = 2


@dataclass(frozen=True)
class BuildJob:
    model: str = DEFAULT_MODEL
    corpus: str = DEFAULT_CORPUS
    """The harvest's corpus (embedded name or a path)."""
    layers: str = "all"
    """The layers to build: 'all', '0,5,10' or '0-3'."""
    lenses: tuple[str, ...] = DEFAULT_LENSES
    budget: str | None = None
    """Wall time the build may take, e.g. 2h, 90m, 600s: the cheap lenses for every layer, the others for as many
    layers as fit (None: everything asked)."""
    plan_only: bool = False
    """Print the plan and stop."""
    device: str = "cpu"
    explainer: str = "local"
    simulator: str = "local-all-at-once"
    api: ApiConfig = field(default_factory=ApiConfig)
    max_tokens: int | None = None
    """Harvest a seeded subset of the corpus up to this many tokens (None: all of it)."""
    executor: str = "local"
    """local (this process) or ray (tasks on a Ray cluster; results written here, by this process only)."""
    ray_address: str | None = None
    """With ray: None starts a local cluster for the build; 'auto' or HOST:PORT joins a running one."""
    ray_cpus: int | None = None
    """CPUs of the local Ray cluster (None: all of this machine's)."""


@dataclass(frozen=True)
class Stage:
    lens: str
    layers: list[int]
    units: int
    """Units of the stage (for the harvest: corpus tokens)."""
    seconds: float
    basis: str
    """Where ``seconds`` comes from: "measured" (this machine's earlier builds), "VM" (the project VM's numbers)
    or "done" (nothing left to do)."""


@dataclass(frozen=True)
class BuildSummary:
    plan: list[Stage]
    dropped: dict[str, list[int]]
    """lens -> asked layers the budget left out."""
    seconds: dict[str, float] = field(default_factory=dict)
    """lens -> wall seconds this build spent on it (empty with plan_only)."""


def parse_budget(text: str | None) -> float | None:
    if text is None:
        return None
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([hms]?)\s*", text)
    if not m:
        raise UserError(f"--budget {text!r}: use a number of seconds or e.g. 90m, 2h")
    return float(m.group(1)) * {"h": 3600, "m": 60, "s": 1, "": 1}[m.group(2)]


def costs_file(db: Path) -> Path:
    return Path(str(db) + ".costs.json")


def measured_costs(db: Path, model_id: str, device: str) -> dict[str, float]:
    """lens -> seconds per unit measured by earlier builds of this model on this device."""
    try:
        return json.loads(costs_file(db).read_text()).get(f"{model_id}|{device}", {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_cost(db: Path, model_id: str, device: str, lens: str, per_unit: float) -> None:
    path = costs_file(db)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault(f"{model_id}|{device}", {})[lens] = per_unit
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    tmp.replace(path)


def spread(layers: list[int], k: int) -> list[int]:
    """k of ``layers`` spread evenly over the depth (first and last included when k >= 2)."""
    if k >= len(layers):
        return list(layers)
    if k <= 0:
        return []
    if k == 1:
        return [layers[len(layers) // 2]]
    return sorted({layers[round(i * (len(layers) - 1) / (k - 1))] for i in range(k)})


def plan(job: BuildJob, n_layers: int, units_per_layer: dict[str, int], n_tokens: int, costs: dict[str, float],
         budget_s: float | None, done: tuple[str, ...] = ()) -> tuple[list[Stage], dict[str, list[int]]]:
    """The stages of a build and, under a budget, the layers each expensive lens keeps; lenses in ``done`` have
    nothing left to do."""
    from analysis.jobs.common import parse_layers

    bad = [x for x in job.lenses if x not in LENSES]
    if bad or not job.lenses:
        raise UserError(f"--lenses {','.join(job.lenses)!r}: use some of {', '.join(LENSES)}")
    layers = parse_layers(job.layers, n_layers)

    def cost(lens: str, ls: list[int]) -> Stage:
        per = 0.0 if lens in done else costs.get(lens, PROJECT_VM[lens])
        if lens == "harvest":  # one pass of the corpus, as deep as the deepest layer
            units = n_tokens
            seconds = per * n_tokens * (max(ls) + 1) / n_layers if ls else 0.0
        else:
            units = units_per_layer[lens] * len(ls)
            seconds = per * units
        return Stage(lens, ls, units, seconds, "done" if lens in done else "measured" if lens in costs else "VM")

    stages = [cost(lens, layers) for lens in LENSES if lens in job.lenses]
    dropped: dict[str, list[int]] = {}
    if budget_s is None:
        return stages, dropped
    cheap = sum(s.seconds for s in stages if s.lens in CHEAP)
    if cheap > budget_s:
        raise UserError(f"--budget {job.budget}: the cheap lenses ({', '.join(s.lens for s in stages if s.lens in CHEAP)}"
                        f") alone need ≈ {fmt_seconds(cheap)}; give more time, fewer --layers or fewer --lenses")
    left = budget_s - cheap
    out = []
    for s in stages:
        if s.lens in CHEAP:
            out.append(s)
            continue
        per_layer = s.seconds / max(len(s.layers), 1)
        k = min(len(s.layers), int(left // per_layer) if per_layer > 0 else len(s.layers))
        keep = spread(s.layers, k)
        kept = cost(s.lens, keep)
        left -= kept.seconds
        if len(keep) < len(s.layers):
            dropped[s.lens] = [x for x in s.layers if x not in keep]
        out.append(kept)
    return out, dropped


def fmt_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def plan_lines(stages: list[Stage], dropped: dict[str, list[int]], budget_s: float | None) -> list[str]:
    from analysis.jobs.common import fmt_layers

    lines = ["plan (seconds per unit: measured = earlier builds on this machine, VM = the project's 2-core VM; "
             "work already done is skipped):"]
    for s in stages:
        what = f"{s.units:,} tokens" if s.lens == "harvest" else f"{s.units:,} units"
        where = fmt_layers(s.layers) if s.layers else "none"
        lines.append(f"  {s.lens:9s} layers {where:12s} {what:>16s}  ≈ {fmt_seconds(s.seconds):>7s} "
                     f"({s.basis})")
    total = sum(s.seconds for s in stages)
    lines.append(f"  total ≈ {fmt_seconds(total)}" + (f" of a {fmt_seconds(budget_s)} budget" if budget_s else ""))
    for lens, left in dropped.items():
        if left:
            lines.append(f"  the budget leaves {lens} out of layers {fmt_layers(left)}")
    return lines


def _harvest_job(job: BuildJob, layers: str):
    from analysis.jobs.harvest import HarvestJob

    return HarvestJob(model=job.model, corpus=job.corpus, layers=layers, max_tokens=job.max_tokens,
                      device=job.device, skip_if_cached=True)


def _subject_shape(job: BuildJob, db: Path):
    """(ModelInfo, tokens the harvest will read, whether the harvest stage has nothing to do): from the cache when
    it holds the run the harvest would reuse, else by loading the model and windowing the corpus once."""
    from analysis.jobs.common import parse_layers
    from analysis.jobs.harvest import cached_run
    from cache.store import open_store

    if Path(db).exists():
        with open_store(db, read_only=True) as store:
            info = store.catalog.model(job.model)
            run = cached_run(store, _harvest_job(job, job.layers)) if info is not None else None
            if run is not None:
                parse_layers(job.layers, info.n_layers)
                return info, run.n_tokens, True
    from analysis.corpus import load_corpus, make_windows, select_windows
    from analysis.config import HarvestConfig
    from analysis.models import load_model

    subject = load_model(job.model, device=job.device)
    cfg = HarvestConfig()
    windows = list(make_windows(load_corpus(job.corpus).documents, subject.tokenizer, cfg.seq_len))
    windows = select_windows(windows, job.max_tokens, seed=cfg.seed)
    return subject.info, sum(len(w.token_ids) for w in windows), False


def build(job: BuildJob, db: Path, progress: Progress = Progress()) -> BuildSummary:
    """Plan, then run every stage (resumable: each stage's job skips what is done)."""
    from analysis.jobs.common import fmt_layers

    budget_s = parse_budget(job.budget)
    check_device(job.device)
    config = ExecutorConfig(job.executor, job.ray_address, job.ray_cpus)  # checks itself
    info, n_tokens, harvested = _subject_shape(job, db)
    units = {lens: info.d_mlp for lens in LENSES}  # topics: per neuron, all modes
    costs = measured_costs(db, info.model_id, job.device)
    stages, dropped = plan(job, info.n_layers, units, n_tokens, costs, budget_s, ("harvest",) if harvested else ())
    for line in plan_lines(stages, dropped, budget_s):
        progress.note(line)
    if job.plan_only:
        return BuildSummary(stages, dropped)
    spent: dict[str, float] = {}
    executor = make_executor(config, job.device)
    where = "" if executor.local else f" on Ray ({executor.workers} workers)"
    bar = progress.bar(sum(len(s.layers) for s in stages), "build" + where, unit="stage-layer")
    try:
        for stage in stages:
            layers = stage.layers if stage.lens != "harvest" else [None]
            for layer in layers:
                bar.set_description(f"build{where}: {stage.lens}" + (f" L{layer}" if layer is not None else ""))
                t0 = time.monotonic()
                new = _run_stage(job, db, stage.lens, layer, fmt_layers(stage.layers), info, progress, executor)
                took = time.monotonic() - t0
                spent[stage.lens] = spent.get(stage.lens, 0.0) + took
                if new >= 8 and executor.local:  # enough new work to be a measurement of this machine
                    record_cost(db, info.model_id, job.device, stage.lens, took / new)
                bar.update(len(stage.layers) if layer is None else 1)
    finally:
        bar.close()
        executor.close()
    return BuildSummary(stages, dropped, spent)


def check_device(device: str) -> None:
    """A clear message, before any work, when a GPU is asked for and there is none here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")


def _run_stage(job: BuildJob, db: Path, lens: str, layer: int | None, layers: str, info, progress,
               executor) -> int:
    """Run one lens on one layer (the harvest: on all its layers at once); return the units done now."""
    quiet = Progress(enabled=False) if not progress.enabled else progress
    everything = f"0-{info.d_mlp - 1}"
    if lens == "harvest":
        from analysis.jobs.harvest import harvest

        s = harvest(_harvest_job(job, layers), db, quiet, executor)
        return s.n_tokens if s.status == "done" else 0
    if lens in ("baselines", "explain"):
        from analysis.jobs.explain import ExplainJob, explain

        who = "token-lookup" if lens == "baselines" else job.explainer
        s = explain(ExplainJob(layer=layer, neurons=everything, model=job.model, explainer=who, device=job.device,
                               api=job.api), db, quiet, executor)
        new = len(s.explained)
        if lens == "explain":
            return new
    if lens in ("baselines", "score"):
        from analysis.jobs.score import ScoreJob, score

        who = "token-lookup" if lens == "baselines" else job.simulator
        s = score(ScoreJob(layer=layer, neurons=everything, model=job.model, simulator=who, device=job.device,
                           api=job.api), db, quiet, executor)
        return max(len(s.results), new if lens == "baselines" else 0)
    if lens == "topics":
        from analysis.jobs.topics import TopicsJob, topics

        s = topics(TopicsJob(layer=layer, model=job.model, device=job.device), db, quiet, executor)
        return round(info.d_mlp * s.computed / max(len(s.sets) / 2, 1))  # in neurons' worth of (mode, unit) pairs
    if lens == "n2g":
        from analysis.jobs.n2g import N2GJob, n2g

        return n2g(N2GJob(layer=layer, model=job.model, device=job.device), db, quiet, executor=executor).built
    if lens == "effects":
        from analysis.jobs.causal import EffectsJob, effects_of

        return len(effects_of(EffectsJob(layer=layer, neurons=everything, model=job.model, device=job.device), db,
                              quiet, executor))
    raise UserError(f"unknown lens {lens!r}")
