"""Job: explain units from their top train records, and store the explanations (resumable)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.api import ApiConfig
from analysis.jobs.common import batched_writes, cached_model, fan_out, n_units, parse_units, unit_records
from analysis.progress import Progress
from analysis.types import MLP, Explanation, UnitId, UserError

EXPLAINERS = ("local", "api", "token-lookup")


@dataclass(frozen=True)
class ExplainJob:
    layer: int
    neurons: str
    """Unit indices, e.g. 0-99 or 3,5,8."""
    model: str = DEFAULT_MODEL
    source: str = MLP
    explainer: str = "token-lookup"
    explainer_model: str = DEFAULT_MODEL
    """The local explainer's model."""
    device: str = "cpu"
    force: bool = False
    """Explain again units this explainer already explained."""
    revise: bool = False
    """Also store a revised explanation (the paper's revision step; model explainers only)."""
    api: ApiConfig = field(default_factory=ApiConfig)
    api_concurrency: int = 4
    """API requests in flight at once."""


@dataclass(frozen=True)
class ExplainSummary:
    explained: dict[int, tuple[Explanation, ...]]
    """unit index -> what was stored for it now (initial, and revised with --revise)."""
    skipped: int
    """Units this explainer had already explained."""
    failed: dict[int, str]
    """unit index -> why it failed (API errors)."""
    stopped: str | None = None
    """Why the run stopped before every unit was done (the API budget), or None; a rerun goes on from there."""
    left: int = 0
    """Units not explained because of the stop."""
    usage: object = None
    """analysis.api.Usage of the run's API calls (None without an API explainer)."""


def make_explainer(job: ExplainJob, db: Path):
    from analysis import explain

    if job.explainer == "token-lookup":
        return explain.TokenLookupExplainer()
    if job.explainer == "local":
        from analysis.models import load_model

        return explain.LocalExplainer(load_model(job.explainer_model, device=job.device))
    if job.explainer == "api":
        from analysis.api import ApiClient
        from cache.replies import ReplyCache

        return explain.ApiExplainer(ApiClient(job.api, ReplyCache.beside(db)))
    raise UserError(f"unknown explainer {job.explainer!r}: use one of {', '.join(EXPLAINERS)}")


def explain(job: ExplainJob, db: Path, progress: Progress = Progress()) -> ExplainSummary:
    from analysis.explain import RevisingExplainer
    from analysis.splits import explainer_train
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        n = n_units(store, info, job.source, job.layer)
    units = parse_units(job.neurons, n, "neurons" if job.source == MLP else "features")
    if job.revise and job.explainer not in ("api", "local"):
        raise UserError("--revise needs a model explainer (local or api)")
    recs = unit_records(db, job.model, job.layer, units, job.source)
    with open_store(db, read_only=True) as store:  # resumable: skip units this explainer already did
        todo = [u for u in units if job.force or not any(
            e.explainer == job.explainer for e in store.explanations.of_unit(recs[u].run_id, recs[u].unit))]
    if job.explainer == "api" and todo:
        job.api.check()
        from analysis.api import plan_line
        from analysis.prompts import explain_prompt

        calls = [(len(explain_prompt(explainer_train(recs[u]), recs[u].stats.max)), 60) for u in todo]
        progress.note(plan_line(len(todo), "neuron", calls * (2 if job.revise else 1), job.api))
    explainer = make_explainer(job, db) if todo else None  # loads a model only when there is work

    def work(u: int) -> tuple[Explanation, ...]:
        rec = recs[u]
        if job.revise:
            return RevisingExplainer(explainer).explain_both(explainer_train(rec), rec.stats.max)
        return (explainer.explain(explainer_train(rec), rec.stats.max),)

    from analysis.api import BudgetReached

    explained, failed, stopped, left = {}, {}, None, 0
    bar = progress.bar(len(todo), f"explain L{job.layer} ({job.explainer})", unit="neuron")
    workers = job.api_concurrency if job.explainer == "api" else 1
    with batched_writes(db) as write:  # this thread does all writing, in short visits
        for u, exps, err in fan_out(work, todo, workers):
            bar.update(1)
            if isinstance(err, BudgetReached):
                stopped, left = str(err), left + 1
                continue
            if err is not None:
                failed[u] = str(err)
                progress.note(f"neuron {u}: {err}")
                continue
            for exp in exps:
                write(lambda store, rec=recs[u], exp=exp: store.explanations.put(rec.run_id, rec.unit, exp))
            explained[u] = exps
    bar.close()
    usage = explainer.client.spent if job.explainer == "api" and explainer is not None else None
    return ExplainSummary(explained, len(units) - len(todo), failed, stopped, left, usage)


def save_scored(db: Path, unit: UnitId, run_id: str, exp: Explanation, scored) -> str:
    """Store one explanation with a scored simulation of it (the viewer's "save"); returns its id."""
    from cache.store import open_store

    with open_store(db) as store:
        eid = store.explanations.put(run_id, unit, exp)
        store.explanations.put_simulation(eid, scored)
    return eid
