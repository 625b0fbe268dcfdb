"""Job: simulate stored (or given) explanations on held-out records and store the scores (resumable).

An explanation-blind predictor (token-lookup, ``BASELINES``) scores the unit, not an explanation: it is stored
once per unit and record set as the unit's baseline, the number every explanation has to beat."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.api import ApiConfig
from analysis.jobs.fanout import Tally, fan_out, settled
from analysis.jobs.reads import cached_model, n_units, unit_records
from analysis.jobs.specs import parse_units
from analysis.jobs.writes import batched_writes
from analysis.progress import Progress
from analysis.splits import SCORING_SETS
from analysis.types import MLP, UnitRecord, UserError

SIMULATORS = ("local-all-at-once", "api-all-at-once", "api-json", "token-lookup")
API_SIMULATORS = ("api-all-at-once", "api-json")
BASELINES = ("token-lookup",)
"""Predictors that ignore the explanation."""


@dataclass(frozen=True)
class ScoreJob:
    layer: int
    """Layer."""
    neurons: str
    """Unit indices, e.g. 0-99 or 3,5,8."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    explanation: str | None = None
    """Score (and store, as a human explanation) this text instead of the stored explanations."""
    scorer: str = "simulation"
    """Scorers, comma-separated: simulation (by --simulator), embedding (offline), detection and fuzz (an API),
    output (offline: the unit clamped)."""
    simulator: str = "token-lookup"
    """Who simulates (the simulation scorer)."""
    simulator_model: str = DEFAULT_MODEL
    """The local simulator's model."""
    simulator_dtype: str = "float32"
    """bfloat16 simulates ~2x faster on CPUs with AVX512-BF16, at bf16 precision."""
    scoring_set: str = "top-and-random"
    """Held-out records to score on."""
    device: str = "cpu"
    """Cpu or cuda."""
    force: bool = False
    """Score again explanations already scored by this simulator on this set."""
    calibrate: bool = True
    """Also simulate the calibration records and report calibrated R² / absolute deviation (the paper's
    calibrated simulator; one more simulation per explanation)."""
    api: ApiConfig = field(default_factory=ApiConfig)
    api_concurrency: int = 4
    """Requests in flight at once."""


@dataclass(frozen=True)
class ScoreSummary:
    results: list
    """analysis.evaluate.ScoredSimulation of every explanation (or, for a baseline, unit) scored now (a failed
    simulation has .error)."""
    todo: int
    """Explanations (units, for a baseline) that needed a score."""
    failed: dict[int, str]
    """unit index -> why its scoring could not run (API errors before any simulation)."""
    stopped: str | None = None
    """Why the run stopped before everything was scored (the API budget), or None; a rerun goes on from there."""
    left: int = 0
    """Explanations (units) not scored because of the stop."""
    usage: object = None
    """analysis.api.Usage of the run's API calls (None without an API simulator)."""
    printed: list = field(default_factory=list)
    """What ``score --json`` prints: every score of the job's units by its scorers, scored now or stored before
    (each with ``unit`` and ``explanation_id``)."""

    def __add__(self, other: "ScoreSummary") -> "ScoreSummary":
        usage = self.usage if other.usage is None else other.usage if self.usage is None else self.usage + other.usage
        return ScoreSummary(self.results + other.results, self.todo + other.todo, {**self.failed, **other.failed},
                            self.stopped or other.stopped, self.left + other.left, usage,
                            self.printed + other.printed)


def make_simulator(name: str, rec: UnitRecord, model: str = DEFAULT_MODEL, device: str = "cpu",
                   dtype: str = "float32", client=None, load=None):
    """A simulator by name, for one unit (token-lookup is fitted to the unit's own records); ``client``: the
    analysis.api.ApiClient of the api simulators. ``load`` (name) lets the viewer pass its loaded models."""
    from analysis import simulate

    if name == "token-lookup":
        from analysis.evaluate import token_lookup_simulator

        return token_lookup_simulator(rec)
    if name == "local-all-at-once":
        return simulate.LocalAllAtOnceSimulator(load(model) if load else _simulator_subject(model, device, dtype),
                                                record_model=rec.model_id)
    if name in API_SIMULATORS:
        if client is None:
            ApiConfig().check()  # says which options are missing
        return (simulate.ApiJsonSimulator if name == "api-json" else simulate.ApiAllAtOnceSimulator)(client)
    raise UserError(f"unknown simulator {name!r}: use one of {', '.join(SIMULATORS)}")


@functools.lru_cache(maxsize=1)
def _simulator_subject(name: str, device: str, dtype: str):
    """The local simulator's model, loaded once per process (every unit of a run shares it)."""
    import torch

    from analysis.models import load_model

    return load_model(name, device=device, dtype=getattr(torch, dtype))


CHUNK = {"token-lookup": 64}
"""Explanations (baselines: units) per executor task by simulator (model simulators: 4)."""


@dataclass(frozen=True)
class ScoreTask:
    """Simulate and score a chunk of (record, explanation text) with a model-free or local simulator (an executor
    task; the local simulator's model is loaded once per process)."""

    simulator: str
    simulator_model: str
    device: str
    dtype: str
    scoring_set: str
    calibrate: bool

    def simulate(self, simulator, rec: UnitRecord, text: str):
        from analysis.evaluate import score_explanation

        return score_explanation(simulator, text, rec, self.scoring_set, self.calibrate)

    def __call__(self, items: list) -> list:
        """[(ScoredSimulation, None) or (None, why it could not run)] in the items' order."""
        out = []
        for rec, text in items:
            try:
                sim = make_simulator(self.simulator, rec, self.simulator_model, self.device, self.dtype)
                out.append((self.simulate(sim, rec, text), None))
            except UserError as exc:
                out.append((None, str(exc)))
        return out


def score(job: ScoreJob, db: Path, progress: Progress = Progress(), executor=None,
          records: dict | None = None) -> ScoreSummary:
    """Score the job's explanations (or baselines) by each of its scorers (``analysis.scorers.SCORERS``):
    simulation as ``simulate_scores``, the others by ``analysis.jobs.judge``. ``records``: as for
    ``jobs.explain.explain``."""
    from analysis.explain import HumanExplainer
    from analysis.scorers import SCORERS
    from cache.store import open_store

    scorers = [x.strip() for x in job.scorer.split(",") if x.strip()]
    if not scorers or any(x not in SCORERS for x in scorers):
        raise UserError(f"unknown scorer in {job.scorer!r}: use one or more of {', '.join(SCORERS)}")
    if job.scoring_set not in SCORING_SETS:
        raise UserError(f"unknown scoring set {job.scoring_set!r}: use one of {', '.join(SCORING_SETS)}")
    if job.simulator not in SIMULATORS:
        raise UserError(f"unknown simulator {job.simulator!r}: use one of {', '.join(SIMULATORS)}")
    baseline = "simulation" in scorers and job.simulator in BASELINES
    if baseline and job.explanation is not None:
        raise UserError(f"{job.simulator} ignores the explanation: it scores the unit (a baseline for every "
                        "explanation of it); drop --explanation, or pick a simulator that reads it "
                        f"({', '.join(x for x in SIMULATORS if x not in BASELINES)})")
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        n = n_units(store, info, job.source, job.layer)
    units = parse_units(job.neurons, n, "neurons" if job.source == MLP else "features", allow_all=True)
    recs = records if records is not None and set(units) <= set(records) else unit_records(
        db, job.model, job.layer, units, job.source)
    only = None
    if job.explanation is not None:
        exp = HumanExplainer(job.explanation).explain([], 0.0)
        with open_store(db) as store:
            only = [store.explanations.put(recs[u].run_id, recs[u].unit, exp) for u in units]
    out = ScoreSummary([], 0, {})
    for scorer in scorers:
        if scorer == "simulation":
            out = out + simulate_scores(job, db, recs, units, progress, executor, only)
        else:
            from analysis.jobs.judge import judge

            out = out + judge(job, scorer, db, recs, units, progress, only)
        if out.stopped:
            break
    return out


def simulate_scores(job: ScoreJob, db: Path, recs: dict, units: list[int], progress: Progress = Progress(),
                    executor=None, only: list[str] | None = None) -> ScoreSummary:
    """Simulate and score the units' explanations (``only``: just these ids), or their baselines: an API simulator
    from threads of this process, the others a chunk per task on ``executor`` (default this process)."""
    from analysis.executor import LOCAL
    from analysis.scorers import reads
    from analysis.splits import calibration, scoring_records
    from cache.store import open_store

    baseline = job.simulator in BASELINES
    todo, stored = [], []  # (unit index, explanation id or None for a baseline, text); what was scored before
    if baseline:
        with open_store(db, read_only=True) as store:
            done = set() if job.force or not recs else store.explanations.units_with_baseline(
                recs[units[0]].run_id, job.source, job.layer, job.simulator, job.scoring_set)
            for u in sorted(done & set(units)):
                stored += [stored_json(b, recs[u], None) for b in store.explanations.baselines(recs[u].run_id,
                                                                                               recs[u].unit)
                           if b.predictor == job.simulator and b.scoring_set == job.scoring_set]
        todo = [(u, None, "") for u in units if u not in done]
    else:
        with open_store(db, read_only=True) as store:
            for u in units:
                for e, sims in store.explanations.with_simulations(recs[u].run_id, recs[u].unit):
                    if not reads("simulation", e.explainer) or (only is not None and e.explanation_id not in only):
                        continue
                    mine = [x for x in sims if x.simulator == job.simulator and x.scoring_set == job.scoring_set
                            and x.error is None]
                    if job.force or not mine:
                        todo.append((u, e.explanation_id, e.text))
                    else:
                        stored.append(stored_json(mine[-1], recs[u], e))
    client = None
    if job.simulator in API_SIMULATORS and todo:
        from analysis.api import ApiClient, plan_line
        from analysis.api import ReplyCache

        client = ApiClient(job.api, ReplyCache.beside(db))
        simulators = {u: make_simulator(job.simulator, recs[u], client=client) for u in {t[0] for t in todo}}
        calls = [simulators[u].cost(text, r) for u, _eid, text in todo for r in
                 scoring_records(recs[u], job.scoring_set) + (calibration(recs[u]) if job.calibrate else [])]
        progress.note(plan_line(len(todo), "explanation", calls, job.api))
    task = ScoreTask(job.simulator, job.simulator_model, job.device, job.simulator_dtype, job.scoring_set,
                     job.calibrate)

    def work(item):  # an API simulator's: requests from threads of this process
        u, _eid, text = item
        return task.simulate(simulators[u], recs[u], text)

    def outcomes():  # (todo item, ScoredSimulation, error)
        if client is not None:
            yield from fan_out(work, todo, job.api_concurrency)
            return
        size = CHUNK.get(job.simulator, 4)
        chunks = [todo[b : b + size] for b in range(0, len(todo), size)]
        inputs = ([(recs[u], text) for u, _eid, text in c] for c in chunks)
        for chunk, outs in zip(chunks, (executor or LOCAL).map(task, inputs)):
            for item, (scored, err) in zip(chunk, outs):
                yield item, scored, None if err is None else UserError(err)

    results, printed, tally = [], [], Tally()
    bar = progress.bar(len(todo), f"score L{job.layer} ({job.simulator})", unit="unit" if baseline else "explanation")

    def put(store, items) -> None:
        if baseline:
            store.explanations.put_baselines(items)
        else:
            for eid, scored in items:
                store.explanations.put_simulation(eid, scored)

    with batched_writes(db, put) as add:
        for (u, eid, text), scored in settled(outcomes(), tally, bar, progress, key=lambda it: it[0], what="neuron"):
            add((recs[u].run_id, recs[u].unit, scored) if baseline else (eid, scored))
            results.append(scored)
            printed.append(dict(scored.to_json(), unit=str(recs[u].unit), explanation_id=eid))
            if scored.error:
                progress.note(f"neuron {u}: simulation failed: {scored.error}")
    bar.close()
    return ScoreSummary(results, len(todo), tally.failed, tally.stopped, tally.left,
                        client.spent if client is not None else None, printed + stored)


def stored_json(sim, rec: UnitRecord, exp) -> dict:
    """A stored simulation (``cache.explanations.StoredSimulation``, or a ``StoredBaseline`` with ``exp`` None)
    as ``ScoredSimulation.to_json`` gives it, its records' tokens and real values read from the unit's record."""
    from analysis.evaluate import ScoredSimulation
    from analysis.splits import calibration, scoring_records

    by_window = {r.window_id: r for r in scoring_records(rec, sim.scoring_set) + calibration(rec)}
    rows = [by_window.get(w) for w in sim.window_ids]
    simulated = sim.simulated if exp is not None else sim.predicted
    scored = ScoredSimulation(exp.text if exp is not None else "", getattr(sim, "simulator", None) or sim.predictor,
                              sim.params, sim.scoring_set, list(sim.window_ids),
                              [list(r.tokens) if r else [] for r in rows], [list(r.activations) if r else []
                                                                           for r in rows],
                              simulated, sim.score, sim.rsquared, sim.absolute_dev_explained,
                              getattr(sim, "max_activation", None) or rec.stats.max, sim.error,
                              sim.calibration, getattr(sim, "usage", None), sim.lo, sim.hi)
    return dict(scored.to_json(), unit=str(rec.unit),
                explanation_id=exp.explanation_id if exp is not None else None, stored=True)
