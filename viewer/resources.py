"""The viewer's only Streamlit caches, its database access and the one path by which it writes (jobs).
Every cached argument is part of the key."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import streamlit as st

from analysis.config import default_db
from analysis.models import SubjectModel, load_model
from analysis.progress import Progress
from analysis.types import MLP, UserError
from cache.store import Store, open_store

MAX_LIVE_TOKENS = 1024
"""Live text longer than this many tokens is cut (with a message): ~2 s of CPU at the last layer."""

T = TypeVar("T")


def db_path() -> Path:
    """``streamlit run viewer/app.py -- --db PATH``, else $NEURON_VIEWER_DB, else the demo cache."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.db or os.environ.get("NEURON_VIEWER_DB") or default_db()).expanduser().resolve()


@contextmanager
def store() -> Iterator[Store]:
    """The database, read-only, for the duration of one read, through the server's one shared connection (which
    lets go of the file whenever a writer announces itself: cache/db.py)."""
    with open_store(db_path(), read_only=True, wait_s=8.0, shared=True) as s:
        yield s


def read(fn: Callable[[Store], T]) -> T | None:
    """``fn`` on the read-only database: a page's one preamble. An error (missing, corrupt or busy database, an
    unknown unit) is shown on the page and gives None."""
    try:
        with store() as s:
            return fn(s)
    except Exception as exc:
        show_error(exc)
        return None


def catalog(s: Store) -> tuple[list, dict, dict]:
    """(models, sources per model, dictionaries by source) as of the data ``s`` reads, kept until the file
    changes (what every page asks first)."""
    if s.version is None:
        return _catalog(s)
    return _catalog_of(s, str(s.path), s.version)


def _catalog(s: Store) -> tuple[list, dict, dict]:
    return s.catalog.models(), s.runs.sources(), {d.source: d for d in s.catalog.dictionaries()}


@st.cache_resource(max_entries=8, show_spinner=False)
def _catalog_of(_s: Store, path: str, version: tuple):
    return _catalog(_s)


def find_run(s: Store, model: str, layer: int, source: str = "mlp"):
    """``s.runs.find`` kept until the file changes."""
    if s.version is None:
        return s.runs.find(model, layer, source=source)
    return _find_run(s, str(s.path), s.version, model, layer, source)


@st.cache_resource(max_entries=2048, show_spinner=False)
def _find_run(_s: Store, path: str, version: tuple, model: str, layer: int, source: str):
    return _s.runs.find(model, layer, source=source)


def cached_models(s: Store) -> list:
    """The cached models; when there are none, says how to build a cache (callers then stop)."""
    models = catalog(s)[0]
    if not models:
        st.info(f"{db_path()} holds no harvest yet. Build the demo cache with `make demo`, or run "
                f"`python -m analysis harvest --db {db_path()}`.")
    return models


def pick_unit(s: Store, prefix: str = "", container=None, buttons: bool = True):
    """The unit pages' preamble: the cached models, the picker (synced with the URL), and the run holding the
    picked unit's layer: (Picked, RunInfo or None), or None when the database holds no model yet."""
    from viewer.components.picker import neuron_picker

    models = cached_models(s)
    if not models:
        return None
    _models, sources, dictionaries = catalog(s)
    picked = neuron_picker(models, prefix=prefix, container=container, buttons=buttons, sources=sources,
                           dictionaries=dictionaries)
    return picked, find_run(s, picked.model.name, picked.layer, picked.source)


def pick_unit_stats(s: Store):
    """``pick_unit``, then the picked unit's statistics (None when not harvested) and its dictionary's folder
    ('' for neurons): (Picked, UnitStats or None, folder), or None when the database holds no model yet."""
    if (found := pick_unit(s)) is None:
        return None
    picked, run = found
    stats = s.records.unit_stats(run.run_id, picked.unit) if run else None
    d = s.catalog.dictionary(picked.source) if picked.source != MLP else None
    return picked, stats, d.path if d else ""


def unit_record(s: Store, run, unit):
    """A unit's record (``Store.records.unit_record``), kept per server: a finished run's records never change,
    so a tab switch, a rerun or another session's visit does not read them again."""
    return _unit_record(s, run, str(s.path), run.run_id, unit)


@st.cache_resource(max_entries=512, show_spinner=False)
def _unit_record(_s: Store, _run, path: str, run_id: str, unit):
    return _s.records.unit_record(_run, unit)


def kept(s: Store, what: str, fn, *args):
    """``fn(s, *args)``, kept until the file changes (``what``: the spinner's words the first time): for reads
    over every unit of a model, which cost seconds at 500k units and milliseconds to use once kept."""
    if s.version is None:
        return fn(s, *args)
    return _kept(s, fn, str(s.path), s.version, f"{fn.__module__}.{fn.__qualname__}", args, what)


@st.cache_resource(max_entries=16, show_spinner=False)
def _kept(_s: Store, _fn, path: str, version: tuple, name: str, args: tuple, what: str):
    with st.spinner(what):
        return _fn(_s, *args)


def keyword_index(s: Store, model_id: str):
    """``analysis.jobs.embed.keyword_index`` (every explanation of the model and their BM25 index), kept: building
    it reads and indexes every explanation (seconds for 500k), a search then costs milliseconds."""
    from analysis.jobs.embed import keyword_index as build

    return kept(s, "indexing the explanations…", build, model_id)


def vector_index(s: Store, model_id: str):
    """``analysis.jobs.embed.vector_index`` (every explanation vector of the model, as one matrix or an inverted
    file), kept: a search by meaning is then a matrix-vector product, not a read of every vector."""
    from analysis.jobs.embed import vector_index as build

    return kept(s, "loading the explanations' sentence vectors…", build, model_id)


def missing_vectors(s: Store, model_id: str) -> int:
    """How many of the model's explanations have no sentence vector, kept (a scan of every explanation: 0.2 s at
    500k)."""
    return kept(s, "counting the explanations without a vector…", _missing_vectors, model_id)


def _missing_vectors(s: Store, model_id: str) -> int:
    from analysis.search import ENCODER

    return len(s.explanations.missing_vectors(ENCODER, model_id))


def score_overview(s: Store, model_id: str, scoring_set: str | None = None, source: str | None = None):
    """``s.scores.kinds(model_id)`` (no ``scoring_set``), else ``s.scores.overview``, kept: each sums up every score
    of the model in the database (about a second for 500k units)."""
    return kept(s, "summing up the scores…", _score_overview, model_id, scoring_set, source)


def _score_overview(s: Store, model_id: str, scoring_set: str | None, source: str | None):
    return s.scores.kinds(model_id) if scoring_set is None else s.scores.overview(model_id, scoring_set, source)


def scorer_means(s: Store, model_id: str, scoring_set: str | None, source: str):
    """``s.scores.by_scorer`` of a model's units of one source, kept: SQL aggregates over every score of the model
    (about a second for 500k units)."""
    return kept(s, "summing up every scorer…", _scorer_means, model_id, scoring_set, source)


def _scorer_means(s: Store, model_id: str, scoring_set: str | None, source: str):
    return s.scores.by_scorer(model_id, scoring_set, source)


def scorer_disagreements(s: Store, model_id: str, source: str):
    """``s.scores.disagreements`` of a model's units of one source, kept (a few seconds for 500k units with
    several scored explanations each)."""
    return kept(s, "counting the units whose scorers disagree…", _scorer_disagreements, model_id, source)


def _scorer_disagreements(s: Store, model_id: str, source: str):
    return s.scores.disagreements(model_id, source)


def explanation_verdicts(explanation_ids: list[str]) -> dict:
    """The scorers' stored verdicts on these explanations (``store.scorer_results.of_explanations``, without the
    per-example details); {} when the read fails (the failure is shown)."""
    if not explanation_ids:
        return {}
    return read(lambda s: s.scorer_results.of_explanations(explanation_ids)) or {}


def embedding_live(rec, explanation: str):
    """``explanation`` of the unit ``rec`` scored by the offline embedding scorer, every vector computed in memory
    (nothing written): an ``analysis.scorers.ScorerResult``, or a string saying why it could not run."""
    from analysis.scorers.embedding import score_embedding
    from analysis.search import embed

    try:
        with st.spinner("scoring with the embedding scorer…"):
            windows = _window_vectors(rec, str(rec.run_id), rec.unit)
            return score_embedding(explanation, embed([explanation])[0], rec, windows)
    except Exception as exc:
        return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"


@st.cache_resource(max_entries=64, show_spinner=False)
def _window_vectors(_rec, run_id: str, unit) -> dict:
    """Window id -> sentence vector of a unit's classification examples, encoded in memory once per server."""
    from analysis.scorers.embedding import examples_of, window_text
    from analysis.search import embed

    pairs = examples_of(_rec)
    return dict(zip([r.window_id for r, _y in pairs], embed([window_text(r) for r, _y in pairs])))


@st.cache_resource(show_spinner="loading the model (once per server)…", max_entries=2)
def subject(name: str, device: str = "cpu", dtype: str = "float32") -> SubjectModel:
    import torch

    return load_model(name, device=device, dtype=getattr(torch, dtype))


@st.cache_resource(show_spinner="loading the dictionary…", max_entries=4)
def dictionary(source: str, path: str):
    """A dictionary's SAE (``path`` in the key: a moved or rewritten folder is loaded again)."""
    from analysis.jobs.reads import load_dictionary_of

    with store() as s:
        return load_dictionary_of(s, source)


@st.cache_resource(max_entries=4)
def hooks_lock(name: str) -> threading.Lock:
    """Held while hooks are attached to the shared model ``name``: sessions run in threads, and a hook on a
    shared module fires (and stops the pass) in every thread's forward pass through it."""
    return threading.Lock()


def show_error(exc: Exception) -> None:
    st.error(str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")


def live_simulators() -> dict:
    """The simulators that read an explanation pages can run live: name -> factory(UnitRecord). The local one
    runs the embedded model (the CLI's default simulator model, whatever the page's model), shared, under its
    hooks lock (a live-text hook on it must not fire inside a simulation)."""
    from analysis.config import DEFAULT_MODEL
    from analysis.jobs.score import make_simulator

    def local(rec):
        return _Locked(make_simulator("local-all-at-once", rec, DEFAULT_MODEL, load=subject), hooks_lock(DEFAULT_MODEL))

    return {"local-all-at-once": local}


def score_live(rec, asked):
    """What the user asked the own-explanation box (``viewer.components.explanations.OwnExplanation``, or None)
    simulated live and scored (analysis.evaluate.ScoredSimulation), or None when there is nothing to score."""
    from analysis.evaluate import score_explanation

    if asked is None or not asked.text:
        return None
    with st.spinner(f"simulating with {asked.simulator}…"):
        return score_explanation(live_simulators()[asked.simulator](rec), asked.explanation, rec, asked.scoring_set)


class _Locked:
    """A simulator whose runs hold a lock."""

    def __init__(self, inner, lock: threading.Lock):
        self.inner, self.lock, self.name = inner, lock, inner.name

    def simulate(self, explanation: str, records: list):
        with self.lock:
            return self.inner.simulate(explanation, records)


class StreamlitProgress(Progress):
    """A job's progress on the page: each bar is an st.progress line, notes are captions."""

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0, **_kwargs):
        return _Bar(total, desc, unit, initial)

    def note(self, text: str) -> None:
        st.caption(text.strip())


class _Bar:
    def __init__(self, total: int, desc: str, unit: str, initial: int):
        self.total, self.desc, self.unit, self.n = max(total, 1), desc, unit, initial
        self.widget = st.progress(min(1.0, self.n / self.total), text=self._text())

    def _text(self) -> str:
        return f"{self.desc}: {self.n:,} / {self.total:,} {self.unit}"

    def update(self, n: int = 1) -> None:
        self.n += n
        self.widget.progress(min(1.0, self.n / self.total), text=self._text())

    def close(self) -> None:
        pass


def run_job(label: str, job: Callable[[Path, Progress], object]) -> None:
    """Run a job (``analysis.jobs``) in this process, showing its progress; rerun the page when it is done.
    The job writes through the store in short transactions, so other sessions keep reading meanwhile. Jobs
    load their own copy of the model rather than the shared ``subject``: they attach hooks (N2G probes,
    harvest captures) that must not fire inside another session's forward pass."""
    with st.status(label, expanded=True) as status:
        try:
            job(db_path(), StreamlitProgress())
        except Exception as exc:
            show_error(exc)
            status.update(label="the job failed (see above)", state="error")
            return
        status.update(label="done", state="complete")
    st.rerun()


def save_explanation(rec, scored) -> None:
    """Store a user's explanation of a unit with its live score (through the explain job), then rerun."""
    from analysis.jobs.explain import save_scored
    from analysis.types import Explanation

    try:
        save_scored(db_path(), rec.unit, rec.run_id, Explanation(scored.explanation, "human"), scored)
    except Exception as exc:
        show_error(exc)
        return
    st.success("saved")
    st.rerun()


# ---- the Prompt page ------------------------------------------------------------------------------------------

MAX_PROMPT_TOKENS = 256
"""Prompts longer than this many tokens are refused on the Prompt page (the CLI takes any length): the report keeps
every unit's activation, relative activation and attribution at every position (3 × 256 × 30 layers × 1,536 float32
≈ 140 MB for SmolLM2), and a few reports stay cached."""


def prompt_tokens(model_name: str, text: str) -> list[str]:
    """The prompt's tokens as the report will see them (BOS first where the model wants one), for the position
    picker: only the tokenizer runs."""
    subj = subject(model_name)
    ids = subj.bos_prefix + subj.tokenize(text)
    return subj.tokenizer.batch_decode([[i] for i in ids], clean_up_tokenization_spaces=False)


def prompt_report(job):
    """``analysis.jobs.attribute.report`` of ``job`` (an ``AttributeJob``) on the shared model, under its hooks lock
    (the report's hooks and frozen attention are removed before the lock is released), with the dictionaries of
    ``job.sae`` and the corpus maxima the database holds; kept for the last few prompts until the file changes.
    A bad input raises ``UserError``."""
    from analysis.jobs.reads import cached_model

    with store() as s:
        info = cached_model(s, job.model)
        known = {d.source: d for d in s.catalog.dictionaries(info.model_id)}
        missing = [src for src in job.sae or () if src not in known]
        if missing:
            raise UserError(f"no dictionary {', '.join(missing)} of {info.name} in this database")
        version = s.version
    return _prompt_report(str(db_path()), version, job, tuple((src, known[src].path) for src in job.sae or ()))


@st.cache_resource(max_entries=4, show_spinner=False)
def _prompt_report(path: str, version: tuple | None, job, dictionaries: tuple[tuple[str, str], ...]):
    from analysis.jobs.attribute import maxima_of, report
    from analysis.jobs.reads import cached_model

    subj = subject(job.model)
    saes = tuple(dictionary(src, folder) for src, folder in dictionaries)
    with store() as s:
        maxima = maxima_of(s, cached_model(s, job.model), saes)
    with hooks_lock(job.model):
        return report(subj, job, saes, maxima)


def unit_lines(s: Store, model_id: str, units) -> dict:
    """``{UnitId: viewer.components.prompt.UnitLine}``: what the store says about each of ``units`` (a few listed
    ones), each kept until the file changes."""
    if s.version is None:
        return {u: _unit_line_of(s, model_id, u) for u in units}
    return {u: _unit_line(s, str(s.path), s.version, model_id, u) for u in units}


@st.cache_resource(max_entries=1024, show_spinner=False)
def _unit_line(_s: Store, path: str, version: tuple, model_id: str, unit):
    return _unit_line_of(_s, model_id, unit)


def _unit_line_of(s: Store, model_id: str, unit):
    """The unit page's glance (``Store.glance``), cut to one line."""
    from viewer.components.prompt import UnitLine

    run = find_run(s, model_id, unit.layer, unit.source)
    rec = s.records.unit_records(run, unit.source, unit.layer, [unit.index]).get(unit.index) if run else None
    if rec is None:
        return UnitLine(harvested=False)
    g = s.glance(model_id, rec)
    base = next((b for b in g.baselines if b.error is None and b.score is not None), None)  # as the glance card
    return UnitLine(
        harvested=True, explanation=g.best[0].text if g.best else None, score=g.best[1].score if g.best else None,
        baseline=base.score if base else None, top_tokens=tuple(g.top_tokens[:4]),
        topic=tuple(g.topic.words[:5]) if g.topic else (), npmi=g.topic.score if g.topic else None,
        f1=g.graph.get("firing", {}).get("f1") if g.graph else None)
