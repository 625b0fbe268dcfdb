"""A build's plan: its config (``BuildJob``), the stages with their estimated seconds and bytes (from this
machine's earlier builds, else the project's measured numbers), and what a budget leaves out."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from analysis.api import ApiConfig
from analysis.config import DEFAULT_CORPUS, DEFAULT_MODEL, HarvestConfig
from analysis.n2g.config import N2GConfig
from analysis.progress import fmt_bytes, fmt_seconds
from analysis.types import UserError

LENSES = ("harvest", "baselines", "topics", "n2g", "effects", "explain", "score")
"""In dependency order: everything reads the harvest; score reads the explanations."""
DEFAULT_LENSES = ("harvest", "baselines", "topics", "n2g")
CHEAP = ("harvest", "baselines")
"""Built for every unit of every asked layer whatever the budget; the others ("expensive") for
``expensive_layers`` x ``expensive_neurons``, under a budget for as many of those layers as fit."""

PROJECT_VM = {"harvest": 1 / 597, "baselines": 0.035, "topics": 0.11, "n2g": 1.8, "effects": 7.0,
              "explain": 5.4, "score": 10.0}
"""Seconds per unit on the project's 2-core VM, fp32, SmolLM2-135M (bench/RESULTS.md): harvest per corpus token
through all 30 layers; baselines = token-lookup explanation + baseline score (0.020) + its embedding score and an
output-weights explanation (≈ 0.015, bench/embed_score.py); n2g at depth with augmentation (its
10 extra train records cost no probes); effects over 20 records; topics all five modes in a worker process per
core; explain / score with the local backends (score with calibration)."""
SMOLLM2_NEURONS = 30 * 1536
"""The neurons whose harvest the project's rates measure: another model's harvest is scaled by its units."""
PROJECT_GPU = {"harvest": 1 / 18_574, "n2g": 0.11}
"""Seconds per unit on one NVIDIA H200 (``--device cuda``), fp32, SmolLM2-135M's shapes with random weights
(bench/RESULTS.md "GPU (one H200)"): the harvest at batch 32, the DuckDB write included; n2g at layers 15 and 29. The other
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
    max_memory: str | None = None
    """Memory the harvest may use, e.g. 12G (on --device cuda: of the GPU): its layers are split into passes that
    fit it (None: this process now plus 80% of the memory available now)."""
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
        if lens == "harvest":  # the corpus through the model, as deep as the deepest layer
            units = n_tokens
            if lens in costs:  # this model's own measured rate (all its layers)
                seconds = per * n_tokens * (max(ls) + 1) / n_layers if ls else 0.0
            else:  # the project's SmolLM2 rate, per unit harvested: a harvest's cost is its units' state
                seconds = per * n_tokens * units_per_layer[lens] * len(ls) / SMOLLM2_NEURONS
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
