"""Job: explain units from their top train records, and store the explanations (resumable)."""

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
from analysis.types import MLP, Explanation, UnitId, UserError

EXPLAINERS = ("local", "api", "token-lookup", "output-weights", "output-effects")
"""Who explains: output-* name what a unit promotes / suppresses (``analysis.jobs.explain_output``)."""


@dataclass(frozen=True)
class ExplainJob:
    layer: int
    """Layer."""
    neurons: str
    """Unit indices, e.g. 0-99 or 3,5,8."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    explainer: str = "token-lookup"
    """Who explains."""
    explainer_model: str = DEFAULT_MODEL
    """The local explainer's model."""
    device: str = "cpu"
    """Cpu or cuda."""
    force: bool = False
    """Explain again units this explainer already explained."""
    revise: bool = False
    """Also store a revised explanation (the paper's revision step; model explainers only)."""
    examples: str = "top"
    """The records the explainer sees: top (its top train records) or quantiles (the top 3 and records across its
    activation quantiles; stored as explainer <name>+quantiles)."""
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


def api_explainer(job: ExplainJob, db: Path):
    from analysis import explain
    from analysis.api import ApiClient
    from analysis.api import ReplyCache

    return explain.ApiExplainer(ApiClient(job.api, ReplyCache.beside(db)))


@functools.lru_cache(maxsize=1)
def _local_explainer(name: str, model: str, device: str):
    """A model-free or local-model explainer, made once per process."""
    from analysis import explain

    if name == "token-lookup":
        return explain.TokenLookupExplainer()
    if name == "local":
        from analysis.models import load_model

        return explain.LocalExplainer(load_model(model, device=device))
    raise UserError(f"unknown explainer {name!r}: use one of {', '.join(EXPLAINERS)}")


CHUNK = {"token-lookup": 64}
"""Units per executor task by explainer (model explainers: 4, a progress step of ~20 s here)."""


EXAMPLES = ("top", "quantiles")


def explainer_records(rec, examples: str = "top") -> list:
    """The records an explainer sees (``ExplainJob.examples``)."""
    from analysis.splits import explainer_quantiles, explainer_train

    return explainer_quantiles(rec) if examples == "quantiles" else explainer_train(rec)


def stored_name(explainer: str, examples: str) -> str:
    """The explainer name its explanations are stored under: explaining from quantiles is another explainer."""
    return explainer if examples == "top" else f"{explainer}+{examples}"


def _explain(explainer, rec, revise: bool, examples: str = "top") -> tuple[Explanation, ...]:
    import dataclasses

    from analysis.explain import RevisingExplainer

    seen = explainer_records(rec, examples)
    out = (RevisingExplainer(explainer).explain_both(seen, rec.stats.max) if revise
           else (explainer.explain(seen, rec.stats.max),))
    return tuple(dataclasses.replace(e, explainer=stored_name(e.explainer, examples)) for e in out)


@dataclass(frozen=True)
class ExplainTask:
    """Explain a chunk of units' records with a local explainer (an executor task; one explainer model per
    process)."""

    explainer: str
    explainer_model: str
    device: str
    revise: bool
    examples: str = "top"

    def __call__(self, recs: list) -> list:
        """[(explanations, None) or (None, why it failed)] in the records' order."""
        explainer = _local_explainer(self.explainer, self.explainer_model, self.device)
        out = []
        for rec in recs:
            try:
                out.append((_explain(explainer, rec, self.revise, self.examples), None))
            except UserError as exc:
                out.append((None, str(exc)))
        return out


def explain(job: ExplainJob, db: Path, progress: Progress = Progress(), executor=None,
            records: dict | None = None) -> ExplainSummary:
    """Explain the job's units: an API explainer from threads of this process, the others a chunk of units per
    task on ``executor`` (default this process). ``records``: the units' records (index -> UnitRecord) where the
    caller has read them already, else read here."""
    from analysis.executor import LOCAL
    from cache.store import open_store

    if job.examples not in EXAMPLES:
        raise UserError(f"unknown --examples {job.examples!r}: use one of {', '.join(EXAMPLES)}")
    if job.explainer.startswith("output-"):  # from the weights or stored effects, not records
        from analysis.jobs.explain_output import explain_output

        return explain_output(job, db, progress, records)
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        n = n_units(store, info, job.source, job.layer)
    units = parse_units(job.neurons, n, "neurons" if job.source == MLP else "features", allow_all=True)
    if job.revise and job.explainer not in ("api", "local"):
        raise UserError("--revise needs a model explainer (local or api)")
    recs = records if records is not None and set(units) <= set(records) else unit_records(
        db, job.model, job.layer, units, job.source)
    with open_store(db, read_only=True) as store:  # resumable: skip units this explainer already did
        done = set() if job.force or not recs else store.explanations.units_explained_by(
            recs[units[0]].run_id, job.source, job.layer, stored_name(job.explainer, job.examples))
    todo = [u for u in units if u not in done]
    if job.explainer == "api" and todo:
        job.api.check()
        from analysis.api import plan_line
        from analysis.prompts import explain_prompt

        calls = [(len(explain_prompt(explainer_records(recs[u], job.examples), recs[u].stats.max)), 60)
                 for u in todo]
        progress.note(plan_line(len(todo), "neuron", calls * (2 if job.revise else 1), job.api))
    if job.explainer not in EXPLAINERS:
        raise UserError(f"unknown explainer {job.explainer!r}: use one of {', '.join(EXPLAINERS)}")
    explainer = api_explainer(job, db) if todo and job.explainer == "api" else None

    def work(u: int) -> tuple[Explanation, ...]:  # an API explainer's: requests from threads of this process
        return _explain(explainer, recs[u], job.revise, job.examples)

    def outcomes():  # (unit, explanations, error)
        if explainer is not None:
            yield from fan_out(work, todo, job.api_concurrency)
            return
        size = CHUNK.get(job.explainer, 4)
        chunks = [todo[b : b + size] for b in range(0, len(todo), size)]
        task = ExplainTask(job.explainer, job.explainer_model, job.device, job.revise, job.examples)
        for chunk, outs in zip(chunks, (executor or LOCAL).map(task, ([recs[u] for u in c] for c in chunks))):
            for u, (exps, err) in zip(chunk, outs):
                yield u, exps, None if err is None else UserError(err)

    explained, tally = {}, Tally()
    bar = progress.bar(len(todo), f"explain L{job.layer} ({job.explainer})", unit="neuron")
    with batched_writes(db, lambda store, items: store.explanations.put_many(items)) as add:  # (this thread writes)
        for u, exps in settled(outcomes(), tally, bar, progress, what="neuron"):
            for exp in exps:
                add((recs[u].run_id, recs[u].unit, exp))
            explained[u] = exps
    bar.close()
    usage = explainer.client.spent if explainer is not None else None
    return ExplainSummary(explained, len(units) - len(todo), tally.failed, tally.stopped, tally.left, usage)


def save_scored(db: Path, unit: UnitId, run_id: str, exp: Explanation, scored) -> str:
    """Store one explanation with a scored simulation of it (the viewer's "save"); returns its id."""
    from cache.store import open_store

    with open_store(db) as store:
        eid = store.explanations.put(run_id, unit, exp)
        store.explanations.put_simulation(eid, scored)
    return eid
