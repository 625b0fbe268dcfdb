"""Job: word-pool topics (Lim & Lauw) of units of a layer, in every projection mode, stored (resumable)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.jobs.reads import cached_model, check_layer, load_dictionary_of, n_units, unit_records
from analysis.jobs.specs import parse_units
from analysis.models import load_cached_subject
from analysis.progress import Progress
from analysis.topics.types import ACTIVATION_SOURCE, NpmiConfig, ProjectionMode, TopicConfig
from analysis.types import MLP, UnitId, UserError

MODES = ("hi-c", "hi-i", "lo-c", "lo-i", ACTIVATION_SOURCE)
PROCESS_MIN_UNITS = 512
"""Fewest (mode, unit) pairs to compute for which ``workers=0`` starts worker processes (each takes ~15 s to
start and load the model and statistics; a layer's topics take minutes)."""


@dataclass(frozen=True)
class TopicsJob:
    layer: int
    """Layer."""
    neurons: str = "all"
    """'all', 0-99 or 3,5,8 (residual dimensions for the lo-* modes)."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units: MLP neurons, or a dictionary's features (hi-* from their decoder rows, and the activation
    mode); the lo-* modes' units are residual dimensions whatever the source."""
    modes: tuple[str, ...] = MODES
    chunk: int = 256
    """Units per batch and per write."""
    device: str = "cpu"
    """Cpu or cuda."""
    force: bool = False
    """Recompute units already in the cache."""
    workers: int = 0
    """Processes on this machine (local executor): 0 one per core when there are at least ``PROCESS_MIN_UNITS``
    to compute, else this process; 1 this process. The pipeline is numpy loops that use one core each: two
    processes on two cores compute ~2x the topics per second."""
    topic: TopicConfig = field(default_factory=TopicConfig)
    npmi: NpmiConfig = field(default_factory=NpmiConfig)


@dataclass(frozen=True)
class TopicsSummary:
    sets: list
    """cache.topics.StoredTopicSet of every asked unit, mode and polarity (with these statistics; the stars with
    their NPMI matrices)."""
    stats_id: str
    stats_corpus: str
    stats_windows: int
    computed: int = 0
    """(mode, unit) pairs computed now (the rest were in the cache)."""
    pairs: int = 0
    """(mode, unit) pairs asked."""
    stats_s: float = 0.0
    """Seconds spent getting the reference statistics (counted once for a database, then read; not a per-unit
    cost: a build keeps it out of its measured seconds per unit)."""


def stats_folder(db: Path) -> Path:
    """Where the reference corpus statistics are kept: beside the database (git-ignored, reused)."""
    return Path(str(db) + ".topics")


def check_not_circular(harvest_corpus: str, stats_corpus: str) -> None:
    """The activation mode's pool comes from the harvest's text: NPMI over that same text would make the words of
    the documents a unit fires on look coherent because they share documents. Refuse it."""
    if harvest_corpus in stats_corpus.split("+"):
        raise UserError(f"the activation topics' pool comes from the harvest of {harvest_corpus}, and the NPMI "
                        f"reference ({stats_corpus}) holds the same text: words of the same documents would look "
                        "coherent for that reason alone. Use a reference corpus without it (the default "
                        "reference-en, or --corpus PATH)")


@dataclass
class TopicsTask:
    """Topics of a chunk of units in one mode, both polarities (an executor task)."""

    model: object
    """analysis.executor.ModelHandle"""
    sae: object
    stats: object
    """analysis.topics.CooccurrenceStats of the reference corpus."""
    config: TopicConfig

    def __call__(self, item) -> list:
        """item: (layer, mode, unit indices, their records for the activation mode else None) -> [ScoredTopics]."""
        from analysis.topics import (Polarity, ScoredTopics, activation_ranking, activation_table,
                                     topics_for_units, topics_from_ranking)

        layer, mode, chunk, recs = item
        subject, config = self.model.get(), self.config
        t0 = time.perf_counter()
        if mode == ACTIVATION_SOURCE:
            results = [topics_from_ranking(activation_ranking(activation_table(recs[u]), recs[u].unit, pol,
                                                              tau=config.tau), subject.tokenizer, self.stats, config)
                       for u in chunk for pol in (Polarity.POS, Polarity.NEG)]
        else:
            results = topics_for_units(subject, layer, chunk, ProjectionMode(mode), self.stats, config,
                                       sae=self.sae)
        per = (time.perf_counter() - t0) / max(len(results), 1)
        return [ScoredTopics(r, per) for r in results]


def topics(job: TopicsJob, db: Path, progress: Progress = Progress(), executor=None, with_sets: bool = True,
           processes=None) -> TopicsSummary:
    """Topics of the job's units, ``job.chunk`` units of one mode per task on ``executor`` (default this
    process); ``with_sets``: read every asked unit's stored sets back into the summary (a build does without:
    ~10 % of a layer's topics time). Where the local executor runs them in worker processes: ``processes``, an
    ``analysis.executor.ProcessExecutor`` the caller owns (a build's, kept across layers), else ones started for
    this call."""
    from analysis.executor import LOCAL, ModelHandle, ProcessExecutor, cores
    from analysis.topics import cached_reference_stats
    from cache.store import open_store

    executor = executor or LOCAL

    bad = [m for m in job.modes if m not in MODES]
    if job.workers < 0:
        raise UserError(f"--workers {job.workers}: use 0 (one per core) or a number of processes")
    if bad or not job.modes:
        raise UserError(f"--mode {','.join(job.modes)!r}: use 'all' or some of {', '.join(MODES)}")
    config = job.topic
    modes = tuple(m for m in job.modes if job.source == MLP or m not in ("lo-c", "lo-i"))
    if not modes:
        raise UserError("the lo-* modes' units are residual dimensions, not dictionary features: use hi-c, hi-i "
                        "or activation")
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        run = store.runs.find(job.model, job.layer, source=job.source)
        check_layer(info, job.layer)
        n_source = n_units(store, info, job.source, job.layer)
        sae = load_dictionary_of(store, job.source)
    t0 = time.perf_counter()
    stats, stats_id = cached_reference_stats(job.npmi, stats_folder(db), progress=progress.enabled)
    stats_s = time.perf_counter() - t0
    if stats.n_windows < 100 or len(stats.vocab) < 20:
        progress.note(f"warning: the reference corpus is tiny ({stats.n_windows} windows, {len(stats.vocab)} words "
                      f"of >= {job.npmi.min_count} occurrences): NPMI will be noisy")
    subject = load_cached_subject(info, job.device, "float32")
    d_model = subject.w_out(0).shape[1]
    params = {"k": config.k, "tau": config.tau, "theta_l": config.theta_l, "theta_u": config.theta_u,
              "kappa_u": config.kappa_u, "stats": stats_id, "corpus": stats.corpus_id, "window": stats.window,
              "min_count": stats.min_count, "eps": config.eps, "corpus_words": stats.n_words,
              "corpus_windows": stats.n_windows}
    with open_store(db, read_only=True) as store:
        done = set() if job.force else store.topics.keys(info.model_id, stats_id, job.layer)
    plan = []  # (mode, unit indices)
    for mode in modes:
        n, kind = ((d_model, "residual dimensions") if mode in ("lo-c", "lo-i") else
                   (n_source, "neurons" if job.source == MLP else "features"))
        try:
            units = parse_units(job.neurons, n, kind, allow_all=True)
        except UserError:
            if not (mode in ("lo-c", "lo-i") and any(m not in ("lo-c", "lo-i") for m in modes)):
                raise UserError(f"--neurons {job.neurons!r}: {mode} takes {kind} 0..{n - 1}") from None
            # asked with the neuron modes (a build's 0-599): the lo-* modes take the dimensions that exist
            units = [u for u in parse_units(job.neurons, max(n, n_source), kind, allow_all=True) if u < n]
        if mode == ACTIVATION_SOURCE and run is None:
            raise UserError(f"the activation source needs a harvest of layer {job.layer} in {db}")
        if mode == ACTIVATION_SOURCE:
            check_not_circular(run.corpus_id, stats.corpus_id)
        plan.append((mode, units))

    def source_of(mode: str) -> str:
        return job.source if mode == ACTIVATION_SOURCE or sae is not None else ProjectionMode(mode).unit_source

    bar = progress.bar(sum(len(u) for _m, u in plan), f"topics L{job.layer}", unit="unit")
    work = []  # (mode, chunk of unit indices)
    for mode, units in plan:
        todo = [u for u in units if any((UnitId(source_of(mode), job.layer, u), mode, p) not in done
                                        for p in ("pos", "neg"))]
        bar.update(len(units) - len(todo))
        work += [(mode, todo[b : b + job.chunk]) for b in range(0, len(todo), job.chunk)]
    # the longest tasks first, so that no worker is left with a long one at the end while the others wait: the
    # activation mode's (its pools make ~1.7x the stars of a projection mode's), then the largest chunks
    work.sort(key=lambda w: (w[0] != ACTIVATION_SOURCE, -len(w[1])))

    def items():  # an activation chunk's records are read when it is handed out
        for mode, chunk in work:
            yield job.layer, mode, chunk, (unit_records(db, job.model, job.layer, chunk, job.source)
                                           if mode == ACTIVATION_SOURCE else None)

    todo_units = sum(len(chunk) for _m, chunk in work)
    key = None  # maps with equal keys may share worker processes: the same task but for the layer
    if executor.local:
        workers = min(job.workers or (cores() if todo_units >= PROCESS_MIN_UNITS else 1), len(work))
        if workers > 1 and processes is not None and not job.workers:
            executor, key = processes, (info.model_id, job.source, stats_id, config, job.device)
        elif workers > 1:
            executor = ProcessExecutor(workers)
    handle = ModelHandle(info.name, info.model_id, job.device, loaded=subject if executor.local else None)
    task = TopicsTask(handle, sae, stats, config)
    results = executor.map(task, items(), key) if key is not None else executor.map(task, items())
    for scored, (_mode, chunk) in zip(results, work):  # results first: zip runs the map to its end
        with open_store(db) as store:
            store.topics.put(info.model_id, stats_id, scored, params)
        bar.update(len(chunk))
    computed = todo_units
    bar.close()
    sets = []
    if with_sets:
        with open_store(db, read_only=True) as store:
            sets = [ts for mode, units in plan for u in units for ts in
                    store.topics.sets(info.model_id, UnitId(source_of(mode), job.layer, u), mode, stats_id)]
        # stars are stored without their NPMI matrix: the same statistics give it back
        sets = [replace(ts, stars=[st if st.npmi is not None else
                                   replace(st, npmi=stats.npmi_matrix(st.words, config.min_pair_count, config.eps))
                                   for st in ts.stars]) for ts in sets]
    return TopicsSummary(sets, stats_id, stats.corpus_id, stats.n_windows, computed,
                         sum(len(units) for _m, units in plan), stats_s)

