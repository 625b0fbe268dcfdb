"""Job: stream a corpus through a model and store every unit's records and statistics (resumable)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from analysis.config import CODE_VERSION, DEFAULT_CORPUS, DEFAULT_MODEL, HarvestConfig
from analysis.jobs.common import fmt_layers, parse_layers
from analysis.progress import Progress
from analysis.types import MLP, UserError


@dataclass(frozen=True)
class HarvestJob:
    model: str = DEFAULT_MODEL
    corpus: str = DEFAULT_CORPUS
    layers: str = "all"
    """'all', '0,5,10' or '0-3'."""
    max_tokens: int | None = None
    """Harvest a seeded random subset of windows up to this many tokens (None: the whole corpus)."""
    device: str = "cpu"
    skip_if_cached: bool = False
    """Do nothing if the database has a finished run of this model name and corpus covering the layers (checked
    without loading the model)."""
    config: HarvestConfig = field(default_factory=HarvestConfig)
    """Window length, top-k, batch and shard sizes, seed; its layers come from ``layers``."""


@dataclass(frozen=True)
class HarvestSummary:
    run_id: str
    status: str
    """'done' (harvested now), 'cached' (an equivalent run was already there)."""
    layers: list[int]
    n_tokens: int
    seconds: float


def run_id_of(model_id: str, corpus_id: str, windows_hash: str, params: dict) -> str:
    """A run's id: the hash of what determines its results (model weights, corpus windows, parameters)."""
    return hashlib.sha256(json.dumps([model_id, corpus_id, windows_hash, params], sort_keys=True).encode()
                          ).hexdigest()[:16]


def checkpoint_dir(db: Path) -> Path:
    """Where a harvest keeps its shard checkpoints: beside the database, never inside it."""
    db = Path(db)
    return db.with_name(db.name + ".harvest")


def harvest(job: HarvestJob, db: Path, progress: Progress = Progress()) -> HarvestSummary:
    """Run (or resume) a harvest into ``db``. Ctrl-C keeps the finished shards; the same job resumes them."""
    from analysis.corpus import EMBEDDED_CORPORA, load_corpus, make_windows, select_windows, windows_hash
    from analysis.harvest import run_harvest, summarise
    from analysis.models import load_model
    from cache.store import open_store

    cfg = job.config
    if job.max_tokens is not None and job.max_tokens <= 0:
        raise UserError("--max-tokens must be a positive number of tokens")
    if cfg.top_k < 1 or cfg.batch_size < 1 or cfg.seq_len < 1:
        raise UserError("--top-k, --batch-size and --seq-len must be at least 1")
    db = Path(db)
    with open_store(db) as store:  # fail fast on a bad path, a corrupt file or another schema version
        if job.skip_if_cached and (info := store.catalog.model(job.model)) is not None:
            corpus = job.corpus if job.corpus in EMBEDDED_CORPORA else None
            for run in store.runs.finished(job.model, parse_layers(job.layers, info.n_layers), corpus):
                if run.params.get("max_tokens") == job.max_tokens:
                    progress.note(f"{db} already holds run {run.run_id} of {job.model} on {run.corpus_id} "
                                  f"({run.n_tokens:,} tokens, layers {fmt_layers(run.layers)}): nothing to do")
                    return HarvestSummary(run.run_id, "cached", run.layers, run.n_tokens, 0.0)
    t0 = time.time()
    subject = load_model(job.model, device=job.device)
    layers = parse_layers(job.layers, subject.info.n_layers)
    corpus = load_corpus(job.corpus)
    windows = list(make_windows(corpus.documents, subject.tokenizer, cfg.seq_len))
    windows = select_windows(windows, job.max_tokens, seed=cfg.seed)
    if not windows:
        raise UserError(f"corpus {job.corpus!r} gives no windows of at least {max(1, cfg.seq_len // 4)} tokens")
    cfg = replace(cfg, layers=tuple(layers))
    params = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "shard_windows")}
    params["max_tokens"] = job.max_tokens
    w_hash = windows_hash(windows)
    run_id = run_id_of(subject.info.model_id, corpus.info.corpus_id, w_hash, params)
    with open_store(db) as store:
        existing = store.runs.get(run_id)
        if existing is not None and existing.status == "done":
            progress.note(f"already harvested: run {run_id} ({existing.n_tokens:,} tokens, layers "
                          f"{fmt_layers(existing.layers)}) in {db}")
            return HarvestSummary(run_id, "cached", existing.layers, existing.n_tokens, 0.0)
        vocab = subject.tokenizer.batch_decode([[i] for i in range(len(subject.tokenizer))],
                                               clean_up_tokenization_spaces=False)
        store.catalog.put_model(subject.info, vocab)
        store.catalog.put_corpus(corpus.info, corpus.documents)
        store.runs.begin(run_id, subject.info.model_id, corpus.info.corpus_id, layers, params, CODE_VERSION,
                         w_hash, windows, source=MLP)
    ckpt_dir = checkpoint_dir(db)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"{run_id}.pt"
    n_tokens = sum(len(w.token_ids) for w in windows)
    progress.note(f"run {run_id}: {subject.info.name}, layers {fmt_layers(layers)}, {len(windows):,} windows / "
                  f"{n_tokens:,} tokens of {corpus.info.corpus_id}" + (" (resuming)" if ckpt.exists() else ""))
    t1 = time.time()
    try:
        state, table_ids = run_harvest(subject, windows, cfg, checkpoint=ckpt, run_id=run_id, device=job.device,
                                       progress=progress)
    except KeyboardInterrupt:
        progress.note(f"\ninterrupted: finished shards are checkpointed in {ckpt}; run the same command again to "
                      "resume")
        raise
    t2 = time.time()
    summaries = summarise(state, table_ids)
    with open_store(db) as store:
        store.records.put_results(run_id, MLP, summaries, {w.window_id: len(w.token_ids) for w in windows})
    ckpt.unlink(missing_ok=True)
    if not any(ckpt_dir.iterdir()):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    t3 = time.time()
    progress.note(f"done: {n_tokens:,} tokens x {len(layers)} layers x {subject.info.d_mlp} neurons in {t3 - t0:.0f} s "
                  f"(load {t1 - t0:.0f} s, harvest {t2 - t1:.0f} s = {n_tokens / max(t2 - t1, 1e-9):.0f} tok/s, "
                  f"write {t3 - t2:.0f} s) -> {db}")
    return HarvestSummary(run_id, "done", layers, n_tokens, t3 - t0)
