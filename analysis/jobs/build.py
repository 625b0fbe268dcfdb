"""Job: build a model's lenses in one resumable command.

A plan comes first: per stage its layers, units, estimated time (seconds per unit measured by earlier builds on
this machine, ``<db>.costs.json``; else the project VM's numbers from bench/RESULTS.md, and said so) and disk.
``budget`` keeps the cheap lenses for every layer and gives the expensive ones as many layers as fit, spread
over the depth. Then each stage runs layer by layer in dependency order through its own job, which skips work
already done (so a killed build resumes), and the seconds per unit it took are recorded for the next plan.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from analysis.api import ApiConfig
from analysis.config import DEFAULT_CORPUS, DEFAULT_MODEL, HarvestConfig
from analysis.executor import ExecutorConfig, ProcessExecutor, cores, make_executor
from analysis.n2g.config import N2GConfig
from analysis.progress import Progress
from analysis.splits import N2G_HEAD
from analysis.types import UserError

LENSES = ("harvest", "baselines", "topics", "n2g", "effects", "explain", "score")
"""In dependency order: everything reads the harvest; score reads the explanations."""
DEFAULT_LENSES = ("harvest", "baselines", "topics", "n2g")
CHEAP = ("harvest", "baselines")
"""Built for every unit of every asked layer whatever the budget; the others ("expensive") for
``expensive_layers`` x ``expensive_neurons``, under a budget for as many of those layers as fit."""

PROJECT_VM = {"harvest": 1 / 597, "baselines": 0.020, "topics": 0.11, "n2g": 1.8, "effects": 7.0,
              "explain": 5.4, "score": 10.0}
"""Seconds per unit on the project's 2-core VM, fp32, SmolLM2-135M (bench/RESULTS.md): harvest per corpus token
through all 30 layers; baselines = token-lookup explanation + baseline score; n2g at depth with augmentation (its
10 extra train records cost no probes); effects over 20 records; topics all five modes in a worker process per
core; explain / score with the local backends (score with calibration)."""
PROJECT_GPU = {"harvest": 1 / 18_574, "n2g": 0.11}
"""Seconds per unit on one NVIDIA H200 (``--device cuda``), fp32, SmolLM2-135M's shapes with random weights
(bench/RESULTS.md, stop 34): the harvest at batch 32, the DuckDB write included; n2g at layers 15 and 29. The other
lenses were not measured on a GPU: a cuda build's plan takes the VM's numbers for them."""
MIN_MEASURED = {"topics": 256}
"""Fewest units a stage's measurement must cover before it is recorded as this machine's cost per unit (else 8):
a few topic units cost mostly their layers' fixed work (projection, records, loading, a first compile) and run in
one process where a whole layer runs in a worker per core: the demo's 12 topic units measured 1.8 s per unit where
whole layers take 0.1 s, so the next plan said ≈ 23 h for the model's topics."""
PROJECT_VM_ONCE = {"topics": 180.0}
"""Seconds a lens spends once for a database on the project VM, whatever its units: topics count the reference
corpus's NPMI statistics (reference-en: ≈ 2-3.5 min; kept beside the database, so only a first build pays)."""
PROJECT_DISK = {"harvest": 8_900.0, "baselines": 8_600.0, "topics": 48_400.0, "n2g": 4_000.0, "effects": 600.0,
                "explain": 300.0, "score": 2_000.0}
"""Bytes of database per unit (the harvest: per harvested neuron) measured by the demo build (bench/RESULTS.md)."""


@dataclass(frozen=True)
class BuildJob:
    model: str = DEFAULT_MODEL
    """Embedded name, HF folder, .gguf file or hub id."""
    corpus: str = DEFAULT_CORPUS
    """The harvest's corpus (embedded name or a path)."""
    layers: str = "all"
    """The layers to build: 'all', '0,5,10' or '0-3'."""
    expensive_layers: str | None = None
    """The layers of the expensive lenses (topics, n2g, effects, explain, score), some of ``layers`` (None: all of
    them)."""
    expensive_neurons: str = "all"
    """The units of each layer the expensive lenses build: 'all', '0-15' or '3,7'."""
    lenses: tuple[str, ...] = DEFAULT_LENSES
    """Comma-separated, some of harvest, baselines, topics, n2g, effects, explain, score."""
    budget: str | None = None
    """Wall time the build may take, e.g. 2h, 90m, 600s: the cheap lenses for every layer, the others for as many
    layers as fit (None: everything asked)."""
    plan_only: bool = False
    """Print the plan and stop."""
    device: str = "cpu"
    """Cpu or cuda."""
    explainer: str = "local"
    """Explainer of the explain lens."""
    simulator: str = "local-all-at-once"
    """Simulator of the score lens."""
    api: ApiConfig = field(default_factory=ApiConfig)
    max_tokens: int | None = None
    """Harvest a seeded subset of the corpus up to this many tokens (None: all of it)."""
    top_k: int = HarvestConfig.top_k
    """Top-activating windows the harvest keeps per unit (past the first 20: Neuron2Graph's extra train records)."""
    n2g_extra_records: int = N2GConfig.extra_records
    """Neuron2Graph's ``N2GConfig.extra_records`` (up to that many of the top records past the first 20)."""
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
    """Where ``seconds`` comes from: "measured" (this machine's earlier builds), "VM" (the project VM's numbers),
    "H200" (a GPU build's lenses measured on one, ``PROJECT_GPU``) or "done" (nothing left to do)."""
    bytes: float = 0.0
    """Database growth it is estimated to add (earlier builds of this model, else the demo build's)."""


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


def measured_costs(db: Path, key: str) -> dict[str, float]:
    """lens -> cost per unit measured by earlier builds: seconds under ``model_id|device``, bytes of database
    under ``model_id|disk``."""
    try:
        return json.loads(costs_file(db).read_text()).get(key, {})
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def record_cost(db: Path, key: str, lens: str, per_unit: float) -> None:
    path = costs_file(db)
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        data = {}
    data.setdefault(key, {})[lens] = per_unit
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
         budget_s: float | None, done: tuple[str, ...] = (), disk: dict[str, float] | None = None,
         once: dict[str, float] | None = None) -> tuple[list[Stage], dict[str, list[int]]]:
    """The stages of a build and, under a budget, the layers each expensive lens keeps; lenses in ``done`` have
    nothing left to do. ``costs``: seconds per unit, ``disk``: bytes per unit (both by lens; measured here, else
    the project VM's); ``once``: seconds a lens spends once before its units (``PROJECT_VM_ONCE``), where it
    still has to."""
    disk, once = disk or {}, once or {}
    from analysis.jobs.specs import parse_layers

    bad = [x for x in job.lenses if x not in LENSES]
    if bad or not job.lenses:
        raise UserError(f"--lenses {','.join(job.lenses)!r}: use some of {', '.join(LENSES)}")
    layers = parse_layers(job.layers, n_layers)
    deep = parse_layers(job.expensive_layers, n_layers) if job.expensive_layers is not None else layers
    if not set(deep) <= set(layers):
        raise UserError(f"--expensive-layers {job.expensive_layers!r}: use some of --layers {job.layers!r} (the "
                        "harvest covers those)")

    on_gpu = PROJECT_GPU if job.device.startswith("cuda") else {}
    reference = {**PROJECT_VM, **on_gpu}

    def basis(lens: str) -> str:
        return "done" if lens in done else "measured" if lens in costs else "H200" if lens in on_gpu else "VM"

    def cost(lens: str, ls: list[int]) -> Stage:
        per = 0.0 if lens in done else costs.get(lens, reference[lens])
        size = 0.0 if lens in done else disk.get(lens, PROJECT_DISK[lens]) * units_per_layer[lens] * len(ls)
        if lens == "harvest":  # one pass of the corpus, as deep as the deepest layer
            units = n_tokens
            seconds = per * n_tokens * (max(ls) + 1) / n_layers if ls else 0.0
        else:
            units = units_per_layer[lens] * len(ls)
            seconds = per * units + (once.get(lens, 0.0) if ls and lens not in done else 0.0)
        return Stage(lens, ls, units, seconds, basis(lens), size)

    stages = [cost(lens, layers if lens in CHEAP else deep) for lens in LENSES if lens in job.lenses]
    dropped: dict[str, list[int]] = {}
    if budget_s is None:
        return stages, dropped
    cheap = sum(s.seconds for s in stages if s.lens in CHEAP)
    if cheap > budget_s:
        raise UserError(f"--budget {job.budget}: the cheap lenses ("
                        f"{', '.join(s.lens for s in stages if s.lens in CHEAP)}) alone need ≈ {fmt_seconds(cheap)}; "
                        "give more time, fewer --layers or fewer --lenses")
    left = budget_s - cheap
    out = []
    for s in stages:
        if s.lens in CHEAP:
            out.append(s)
            continue
        first = once.get(s.lens, 0.0) if s.layers else 0.0
        per_layer = (s.seconds - first) / max(len(s.layers), 1)
        k = min(len(s.layers), int(max(left - first, 0.0) // per_layer) if per_layer > 0 else len(s.layers))
        keep = spread(s.layers, k)
        kept = cost(s.lens, keep)
        left -= kept.seconds
        if len(keep) < len(s.layers):
            dropped[s.lens] = [x for x in s.layers if x not in keep]
        out.append(kept)
    return out, dropped


def _once(db: Path, lenses: tuple[str, ...]) -> dict[str, float]:
    """``PROJECT_VM_ONCE`` of the asked lenses whose one-time work this database still needs (the default
    reference statistics of topics not yet counted beside it)."""
    if "topics" not in lenses:
        return {}
    from analysis.jobs.topics import stats_folder
    from analysis.topics.npmi import stats_path
    from analysis.topics.types import NpmiConfig

    return {} if stats_path(NpmiConfig(), stats_folder(db)).exists() else {"topics": PROJECT_VM_ONCE["topics"]}


def fmt_seconds(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 5400 else f"{s / 60:.0f} min" if s >= 90 else f"{s:.0f} s"


def fmt_bytes(b: float) -> str:
    return f"{b / 1e9:.1f} GB" if b >= 1e9 else f"{b / 1e6:.0f} MB" if b >= 1e6 else f"{b / 1e3:.0f} kB"


def db_bytes(db: Path) -> int:
    """The database file and its write-ahead log, in bytes."""
    return sum(p.stat().st_size for p in (Path(db), Path(str(db) + ".wal")) if p.exists())


def plan_lines(stages: list[Stage], dropped: dict[str, list[int]], budget_s: float | None) -> list[str]:
    from analysis.jobs.specs import fmt_layers

    lines = ["plan (seconds per unit: measured = earlier builds on this machine, VM = the project's 2-core VM, "
             "H200 = one NVIDIA H200 GPU; work already done is skipped):"]
    for s in stages:
        what = f"{s.units:,} tokens" if s.lens == "harvest" else f"{s.units:,} units"
        where = fmt_layers(s.layers) if s.layers else "none"
        lines.append(f"  {s.lens:9s} layers {where:12s} {what:>16s}  ≈ {fmt_seconds(s.seconds):>7s} "
                     f"{fmt_bytes(s.bytes):>9s}  ({s.basis})")
    total = sum(s.seconds for s in stages)
    lines.append(f"  total ≈ {fmt_seconds(total)}, ≈ {fmt_bytes(sum(s.bytes for s in stages))} of database" +
                 (f" (budget {fmt_seconds(budget_s)})" if budget_s else ""))
    for lens, left in dropped.items():
        if left:
            lines.append(f"  the budget leaves {lens} out of layers {fmt_layers(left)}")
    return lines


def _harvest_job(job: BuildJob, layers: str):
    from analysis.jobs.harvest import HarvestJob

    return HarvestJob(model=job.model, corpus=job.corpus, layers=layers, max_tokens=job.max_tokens,
                      device=job.device, skip_if_cached=True, config=HarvestConfig(top_k=job.top_k))


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
    from analysis.jobs.specs import fmt_layers, parse_units

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
    bar = progress.bar(sum(len(s.layers) for s in stages), "build" + where, unit="stage-layer")
    try:
        for i, stage in enumerate(stages):
            layers = stage.layers if stage.lens != "harvest" else [None]
            for layer in layers:
                bar.set_description(f"build{where}: {stage.lens}" + (f" L{layer}" if layer is not None else ""))
                status.current = (i, layer)
                watched.save()
                t0, size0 = time.monotonic(), db_bytes(db)
                new, setup = _run_stage(job, db, stage.lens, layer, fmt_layers(stage.layers), info, watched,
                                        executor, processes)
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


@dataclass
class StageStatus:
    lens: str
    layers: list[int]
    seconds: float
    """The plan's estimate for the whole stage."""
    done: list[int] = field(default_factory=list)
    spent_s: float = 0.0


@dataclass
class BuildStatus:
    """What a build is doing, written beside the database as it goes (``<db>.build.json``)."""

    pid: int
    started: float
    command: str
    """The command that resumes this build (or reruns it: finished work is skipped)."""
    stages: list[StageStatus]
    current: tuple[int, int | None] | None = None
    """(index into ``stages``, layer; None for the harvest, which does all its layers at once) while it runs."""
    step: tuple[str, int, int] | None = None
    """The running stage's own progress: (what, done, total)."""
    units: list[int] | None = None
    """The units of each layer the expensive lenses build (None: all)."""
    finished: float | None = None
    error: str | None = None
    updated: float = 0.0

    @classmethod
    def start(cls, stages: list[Stage], command: str, units: list[int] | None) -> "BuildStatus":
        return cls(os.getpid(), time.time(), command,
                   [StageStatus(s.lens, list(s.layers), s.seconds, list(s.layers) if s.basis == "done" else [])
                    for s in stages], units=units)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    @property
    def running(self) -> bool:
        return self.finished is None and self.error is None and self.alive()

    def pending(self, lens: str, layer: int, index: int) -> bool:
        """Whether this running build is still to write ``lens`` for unit ``index`` of ``layer``."""
        if not self.running or not (lens in CHEAP or self.units is None or index in self.units):
            return False
        return any(s.lens == lens and layer in s.layers and layer not in s.done for s in self.stages)

    @property
    def fraction(self) -> float:
        """Share of the planned seconds done (a running stage-layer counts by its own progress)."""
        total = sum(s.seconds for s in self.stages) or 1.0
        done = sum(s.seconds * len(set(s.done)) / max(len(s.layers), 1) for s in self.stages)
        if self.current is not None and self.step is not None and self.step[2] > 0:
            s = self.stages[self.current[0]]
            share = 1.0 if self.current[1] is None else 1 / max(len(s.layers), 1)
            done += s.seconds * share * min(self.step[1] / self.step[2], 1.0)
        return min(done / total, 1.0)

    def left_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the plan's estimates scaled by how this build has gone so far (None before any
        measurable progress)."""
        now = time.time() if now is None else now
        f = self.fraction
        if f <= 0.01:
            return None
        return (now - self.started) * (1 - f) / f

    def where(self) -> str:
        if self.current is None:
            return ""
        s = self.stages[self.current[0]]
        here = s.lens + (f" L{self.current[1]}" if self.current[1] is not None else "")
        return here + (f" ({self.step[0]}: {self.step[1]:,}/{self.step[2]:,})" if self.step else "")


def status_file(db: Path) -> Path:
    return Path(str(db) + ".build.json")


def read_status(db: Path) -> BuildStatus | None:
    """The last build's status for this database (None when none ran or the file is unreadable)."""
    try:
        d = json.loads(status_file(db).read_text())
        d["stages"] = [StageStatus(**s) for s in d["stages"]]
        d["current"] = tuple(d["current"]) if d.get("current") is not None else None
        d["step"] = tuple(d["step"]) if d.get("step") is not None else None
        return BuildStatus(**d)
    except (OSError, ValueError, TypeError, KeyError):
        return None


class StatusProgress(Progress):
    """The build's progress as shown (the wrapped ``Progress``) and written to its status file: every bar a stage
    opens reports its count into ``status.step`` (at most every SAVE_S seconds)."""

    SAVE_S = 2.0

    def __init__(self, shown: Progress, status: BuildStatus, path: Path):
        super().__init__(shown.enabled)
        self.shown, self.status, self.path, self.saved = shown, status, path, 0.0

    def save(self, throttle: bool = False) -> None:
        now = time.time()
        if throttle and now - self.saved < self.SAVE_S:
            return
        self.saved = self.status.updated = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.status)))
            tmp.replace(self.path)
        except OSError:  # a read-only folder: the stage's own writes will say so
            pass

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0, **kwargs):
        return _StatusBar(self.shown.bar(total, desc, unit, initial, **kwargs), self, desc, total, initial)

    def note(self, text: str) -> None:
        self.shown.note(text)


class _StatusBar:
    """A stage's bar: the shown bar, with its count copied into the build's status."""

    def __init__(self, shown, owner: StatusProgress, desc: str, total: int, initial: int):
        self.shown, self.owner, self.desc, self.total, self.n = shown, owner, desc, total, initial
        self._report(False)

    def _report(self, throttle: bool = True) -> None:
        self.owner.status.step = (self.desc, self.n, self.total)
        self.owner.save(throttle)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.shown.update(n)
        self._report()

    def set_description(self, desc: str, *args, **kwargs) -> None:
        self.desc = desc
        self.shown.set_description(desc, *args, **kwargs)

    def close(self) -> None:
        self.shown.close()

    def __getattr__(self, name):
        return getattr(self.shown, name)


def resume_command(job: BuildJob, db: Path) -> str:
    """The CLI command that runs ``job`` again (flags for the fields that differ from their defaults; an API
    endpoint's settings are not repeated: the command says to add them)."""
    import shlex

    parts = ["python -m analysis build", "--db", shlex.quote(str(db))]
    for f in fields(BuildJob):
        value = getattr(job, f.name)
        if f.name in ("plan_only", "api") or value == f.default:  # (api: its own flags, not kept here)
            continue
        flag = "--" + f.name.replace("_", "-")
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        parts += [flag, shlex.quote(text)]
    if job.api != ApiConfig():
        parts.append("  # plus the --api-* options it was started with")
    return " ".join(parts)


def check_device(device: str) -> None:
    """A clear message, before any work, when a GPU is asked for and there is none here."""
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise UserError(f"--device {device}: torch sees no CUDA GPU on this machine; use --device cpu")


def _run_stage(job: BuildJob, db: Path, lens: str, layer: int | None, layers: str, info, progress,
               executor, processes=None) -> tuple[int, float]:
    """Run one lens on one layer (the harvest: on all its layers at once); return the units done now and the
    seconds of it that were a one-time cost (``PROJECT_VM_ONCE``). ``processes``: the topics stage's worker
    processes, kept from layer to layer."""
    from analysis.jobs.specs import parse_units

    units = "all" if lens in CHEAP else job.expensive_neurons
    if lens == "harvest":
        from analysis.jobs.harvest import harvest

        s = harvest(_harvest_job(job, layers), db, progress, executor)
        return (s.n_tokens if s.status == "done" else 0), 0.0
    records = None
    if lens == "baselines":  # explained and scored from one read of the layer's records
        from analysis.jobs.reads import unit_records

        records = unit_records(db, job.model, layer, list(range(info.d_mlp)))
    if lens in ("baselines", "explain"):
        from analysis.jobs.explain import ExplainJob, explain

        who = "token-lookup" if lens == "baselines" else job.explainer
        s = explain(ExplainJob(layer=layer, neurons=units, model=job.model, explainer=who, device=job.device,
                               api=job.api), db, progress, executor, records)
        new = len(s.explained)
        if lens == "explain":
            return new, 0.0
    if lens in ("baselines", "score"):
        from analysis.jobs.score import ScoreJob, score

        who = "token-lookup" if lens == "baselines" else job.simulator
        s = score(ScoreJob(layer=layer, neurons=units, model=job.model, simulator=who, device=job.device,
                           api=job.api), db, progress, executor, records)
        return max(len(s.results), new if lens == "baselines" else 0), 0.0
    if lens == "topics":
        from analysis.jobs.topics import TopicsJob, topics

        s = topics(TopicsJob(layer=layer, neurons=units, model=job.model, device=job.device), db, progress,
                   executor, with_sets=False, processes=processes)
        # in neurons' worth of (mode, unit) pairs
        return round(len(parse_units(units, info.d_mlp, allow_all=True)) * s.computed / max(s.pairs, 1)), s.stats_s
    if lens == "n2g":
        from analysis.jobs.n2g import N2GJob, n2g

        return n2g(N2GJob(layer=layer, neurons=units, model=job.model, device=job.device,
                          config=N2GConfig(extra_records=job.n2g_extra_records)), db, progress,
                   executor=executor).built, 0.0
    if lens == "effects":
        from analysis.jobs.causal import EffectsJob, effects_of

        return len(effects_of(EffectsJob(layer=layer, neurons=units, model=job.model, device=job.device), db,
                              progress, executor)), 0.0
    raise UserError(f"unknown lens {lens!r}")
