"""Job: fit, score and store a Neuron2Graph graph per unit of a layer (resumable, one write per chunk)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.jobs.reads import cached_model, load_dictionary_of, n_units, unit_records
from analysis.jobs.specs import parse_units
from analysis.models import load_cached_subject
from analysis.progress import Progress
from analysis.n2g.config import N2GConfig
from analysis.splits import N2G_HEAD
from analysis.types import MLP, UnitId


@dataclass(frozen=True)
class N2GJob:
    layer: int
    """Layer."""
    neurons: str = "all"
    """'all', e.g. 0-99 or 3,5,8."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    chunk: int = 32
    """Units fitted together and stored together (an interrupt loses at most one chunk)."""
    device: str = "cpu"
    """Cpu or cuda."""
    dtype: str = "float32"
    """bfloat16 is ~2x faster on CPUs with AVX512-BF16, at bf16 precision."""
    force: bool = False
    """Rebuild graphs already in the cache."""
    config: N2GConfig = field(default_factory=N2GConfig)


@dataclass(frozen=True)
class N2GSummary:
    results: dict
    """unit index -> its analysis.n2g.pipeline.N2GResult: the graph scored on held-out records (built now, or
    read back when ``with_cached``)."""
    built: int
    cached: int


@dataclass
class GraphTask:
    """Fit, score and describe the graphs of a chunk of units' records (an executor task)."""

    model: object
    """analysis.executor.ModelHandle"""
    layer: int
    sae: object
    config: N2GConfig
    params: dict

    def __call__(self, recs: list) -> list:
        """[(N2GResult, its Explanation, its ScoredSimulation)] in the records' order."""
        from analysis.activations import neuron_reader, sae_reader
        from analysis.n2g import pipeline
        from analysis.n2g.fit import ModelProber

        subject = self.model.get()
        reader = neuron_reader(self.layer) if self.sae is None else sae_reader(self.sae.to(subject.device))
        prober = ModelProber(subject, self.layer, reader=reader)
        (results,) = pipeline.fit_layer(subject, self.layer, recs, self.config, len(recs), prober, self.params)
        return [(r, *pipeline.graph_explanation(r, rec, subject.tokenizer)) for r, rec in zip(results, recs)]


def n2g(job: N2GJob, db: Path, progress: Progress = Progress(), with_cached: bool = False,
        executor=None) -> N2GSummary:
    """Graphs for the job's units, fitted ``job.chunk`` units per task on ``executor`` (default this process).
    Each graph is also stored as an explanation (explainer 'n2g', a summary of its patterns) with its scored
    simulation, so it is listed beside the other explanations."""
    from analysis.executor import LOCAL, ModelHandle
    from analysis.n2g import pipeline
    from cache.store import open_store

    executor = executor or LOCAL
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        n = n_units(store, info, job.source, job.layer)
        sae = load_dictionary_of(store, job.source)
    units = parse_units(job.neurons, n, "neurons" if sae is None else "features", allow_all=True)
    recs = unit_records(db, job.model, job.layer, units, job.source)
    run_id = recs[units[0]].run_id
    kept = max(len(r.most_positive_activation_records) for r in recs.values())
    if job.config.extra_records and kept <= N2G_HEAD:
        progress.note(f"no extra train records: this harvest kept {kept} top records per unit, and Neuron2Graph's "
                      f"extra ones are those past the first {N2G_HEAD} (a harvest with --top-k "
                      f"{N2G_HEAD + job.config.extra_records} has {job.config.extra_records}; better graphs at depth)")
    with open_store(db, read_only=True) as store:
        done = set() if job.force else store.graphs.units(run_id, job.layer, job.source)
    todo = [u for u in units if u not in done]
    results: dict = {}
    if todo:
        handle = ModelHandle(info.name, info.model_id, job.device, job.dtype)
        if executor.local:  # the name's weights are the cache's, checked once here
            handle.loaded = load_cached_subject(info, job.device, job.dtype)
        task = GraphTask(handle, job.layer, sae, job.config, {**job.config.to_json(), "dtype": job.dtype})
        bar = progress.bar(len(todo), f"n2g L{job.layer}", unit="unit")
        chunks = [[recs[u] for u in todo[b : b + job.chunk]] for b in range(0, len(todo), job.chunk)]
        for fitted in executor.map(task, chunks):
            with open_store(db) as store:  # one short write per chunk: an interrupt loses at most a chunk
                store.graphs.put(run_id, [r for r, _e, _s in fitted])
                for r, exp, scored in fitted:
                    store.explanations.put_simulation(store.explanations.put(run_id, r.unit, exp), scored)
            results.update((r.unit.index, r) for r, _e, _s in fitted)
            bar.update(len(fitted))
        bar.close()
    if with_cached:
        with open_store(db, read_only=True) as store:
            for u in units:
                if u not in results:
                    g = store.graphs.get(run_id, UnitId(job.source, job.layer, u))
                    results[u] = pipeline.evaluate(recs[u], pipeline.graph_of(g.patterns), g.params, g.seconds)
    return N2GSummary(results, len(todo), len(units) - len(todo))
