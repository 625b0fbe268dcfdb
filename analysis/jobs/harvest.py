"""Job: stream a corpus through a model and store every unit's records and statistics (resumable)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from analysis.config import CODE_VERSION, DEFAULT_CORPUS, DEFAULT_MODEL, HarvestConfig
from analysis.jobs.specs import fmt_layers, parse_layers
from analysis.progress import Progress, fmt_bytes
from analysis.types import MLP, UserError


@dataclass(frozen=True)
class HarvestJob:
    model: str = DEFAULT_MODEL
    """Embedded name, HF folder, .gguf file or hub id."""
    corpus: str = DEFAULT_CORPUS
    """Embedded name or a text/JSONL/parquet path."""
    layers: str | None = None
    """The layers whose neurons to harvest: 'all', '0,5,10', '0-3' or 'none'. Default: all, or with ``sae`` the
    SAEs' layers."""
    sae: tuple[str, ...] = ()
    """SAE folders or hub ids (``DIR[#layer=L,site=S]``): their features are harvested in the same forward pass."""
    baselines: tuple[str, ...] = ()
    """Baseline dictionaries ('basis', 'random') to harvest at every SAE's site (or at resid_post of the neuron
    layers): the residual stream's own dimensions, seeded random directions."""
    max_tokens: int | None = None
    """Harvest a seeded random subset of windows up to this many tokens (None: the whole corpus)."""
    device: str = "cpu"
    """Cpu or cuda."""
    skip_if_cached: bool = False
    """Do nothing if the database has a finished run of this model name and corpus covering the layers (checked
    without loading the model; neurons only)."""
    max_memory: str | None = None
    """Memory the harvest may use, e.g. 12G or 800M (on --device cuda: of the GPU): the layers are split into
    passes that fit it (None: this process now plus 80% of the memory available now)."""
    config: HarvestConfig = field(default_factory=HarvestConfig)
    """Window length, top-k, batch size, token table, checkpoints, seed; its layers come from ``layers``."""


@dataclass(frozen=True)
class HarvestSummary:
    run_id: str
    """The neurons' run (else the first dictionary's)."""
    status: str
    """'done' (harvested now), 'cached' (an equivalent run was already there)."""
    layers: list[int]
    n_tokens: int
    seconds: float
    runs: dict = field(default_factory=dict)
    """source -> run id of every source the job covers."""


def run_id_of(model_id: str, corpus_id: str, windows_hash: str, params: dict) -> str:
    """A run's id: the hash of what determines its results (model weights, corpus windows, parameters)."""
    return hashlib.sha256(json.dumps([model_id, corpus_id, windows_hash, params], sort_keys=True).encode()
                          ).hexdigest()[:16]


def checkpoint_dir(db: Path) -> Path:
    """Where a harvest keeps its shard checkpoints: beside the database, never inside it."""
    db = Path(db)
    return db.with_name(db.name + ".harvest")


def _dictionaries(job: HarvestJob, subject, neuron_layers: list[int]) -> list:
    """The job's SAEs (checked against the model) and baseline dictionaries."""
    from analysis.sae.baselines import baseline_dictionary
    from analysis.sae.load import load_sae
    from analysis.sae.model import check_fits

    saes = []
    for spec in job.sae:
        sae = load_sae(spec)
        check_fits(sae, subject)
        saes.append(sae)
    # baselines at the autoencoders' sites (a transcoder beside them is compared with those), else at the
    # transcoders' input sites, else at the neuron layers' residual stream
    sites = (sorted({(s.layer, s.site) for s in saes if not s.is_transcoder}) or sorted({(s.layer, s.site) for s in saes})
             or [(layer, "resid_post") for layer in neuron_layers])
    baselines = [baseline_dictionary(kind, subject.site_width(site), layer, site, seed=job.config.seed)
                 for kind in job.baselines for layer, site in sites]
    return saes + baselines


def cached_run(store, job: HarvestJob):
    """A finished neuron run that ``skip_if_cached`` takes for this job (same model name, corpus, layers covered,
    same token limit), or None; checked without loading the model."""
    from analysis.corpus import EMBEDDED_CORPORA

    layer_spec = job.layers or ("none" if job.sae else "all")
    if job.sae or job.baselines or layer_spec == "none" or (info := store.catalog.model(job.model)) is None:
        return None
    corpus = job.corpus if job.corpus in EMBEDDED_CORPORA else None
    return next((run for run in store.runs.finished(job.model, parse_layers(layer_spec, info.n_layers), corpus)
                 if run.params.get("max_tokens") == job.max_tokens), None)


def harvest(job: HarvestJob, db: Path, progress: Progress = Progress(), executor=None) -> HarvestSummary:
    """Run (or resume) a harvest into ``db``, its shards on ``executor`` (analysis.executor; default this process).
    Ctrl-C keeps the finished shards; the same job resumes them."""
    from analysis.activations import neuron_reader, sae_reader
    from analysis.corpus import load_corpus, make_windows, select_windows, windows_hash
    from analysis.executor import ModelHandle
    from analysis.harvest.driver import PassTask, begun_passes, salts_of, token_table_of
    from analysis.harvest.memory import in_use, peak_rss, probe_forward
    from analysis.harvest.summary import summarise_slot
    from analysis.jobs.harvest_plan import describe_plan, plan_harvest, run_passes
    from analysis.models import load_model
    from cache.records import RecordRepo
    from analysis.sae.load import dictionary_info
    from cache.store import open_store

    cfg = job.config
    if job.max_tokens is not None and job.max_tokens <= 0:
        raise UserError("--max-tokens must be a positive number of tokens")
    if cfg.top_k < 1 or (cfg.batch_size is not None and cfg.batch_size < 1) or cfg.seq_len < 1:
        raise UserError("--top-k, --batch-size and --seq-len must be at least 1")
    layer_spec = job.layers or ("none" if job.sae else "all")
    db = Path(db)
    created = not db.exists()
    with open_store(db) as store:  # fail fast on a bad path, a corrupt file or another schema version
        if job.skip_if_cached and (run := cached_run(store, job)) is not None:
            progress.note(f"{db} already holds run {run.run_id} of {job.model} on {run.corpus_id} "
                          f"({run.n_tokens:,} tokens, layers {fmt_layers(run.layers)}): nothing to do")
            return HarvestSummary(run.run_id, "cached", run.layers, run.n_tokens, 0.0, {MLP: run.run_id})
    t0 = time.time()
    try:
        subject = load_model(job.model, device=job.device)
        info = subject.info
        neuron_layers = [] if layer_spec == "none" else parse_layers(layer_spec, info.n_layers)
        dictionaries = _dictionaries(job, subject, neuron_layers)
    except UserError:  # a model or a dictionary refused: a database made for this harvest is not left behind
        if created:
            for path in (db, db.with_name(db.name + ".wal")):
                path.unlink(missing_ok=True)
        raise
    if job.sae and job.layers is None:  # the SAEs' layers' neurons come along in the same pass
        neuron_layers = sorted({d.layer for d in dictionaries})
    if not neuron_layers and not dictionaries:
        raise UserError("nothing to harvest: --layers none and no --sae")
    corpus = load_corpus(job.corpus)
    windows = list(make_windows(corpus.documents, subject.tokenizer, cfg.seq_len))
    windows = select_windows(windows, job.max_tokens, seed=cfg.seed)
    if not windows:
        raise UserError(f"corpus {job.corpus!r} gives no windows of at least {max(1, cfg.seq_len // 4)} tokens")
    cfg = replace(cfg, layers=tuple(neuron_layers))
    params = {k: v for k, v in asdict(cfg).items() if k not in ("batch_size", "checkpoint_seconds")}
    params["max_tokens"] = job.max_tokens
    w_hash = windows_hash(windows)
    # one run per source: the neurons' id is what it always was; a dictionary's adds its source and layer
    planned = []  # (source, layers, run_id, reader list, dictionary or None)
    if neuron_layers:
        planned.append((MLP, neuron_layers, run_id_of(info.model_id, corpus.info.corpus_id, w_hash, params),
                        [neuron_reader(layer) for layer in neuron_layers], None))
    for d in dictionaries:
        d_params = {**params, "layers": [d.layer], "source": d.source}
        planned.append((d.source, [d.layer], run_id_of(info.model_id, corpus.info.corpus_id, w_hash, d_params),
                        [sae_reader(d)], d))
    n_tokens = sum(len(w.token_ids) for w in windows)
    table_ids, row_of = token_table_of(subject, windows, cfg)
    ckpt_dir = checkpoint_dir(db)
    with open_store(db) as store:
        if neuron_layers:  # a finished neuron run of other layers that covers these (same windows and settings)
            same = {k: v for k, v in params.items() if k != "layers"}
            for r in store.runs.finished(info.model_id, neuron_layers, corpus.info.corpus_id):
                if {k: v for k, v in r.params.items() if k != "layers"} == same:
                    planned[0] = (MLP, r.layers, r.run_id, [], None)
                    break
        runs = {source: run_id for source, _l, run_id, _r, _d in planned}
        todo = [p for p in planned if (r := store.runs.get(p[2])) is None or r.status != "done"]
        if not todo:
            progress.note(f"already harvested: {', '.join(f'{s} ({r})' for s, r in runs.items())} in {db}")
            return HarvestSummary(planned[0][2], "cached", sorted({l for p in planned for l in p[1]}), n_tokens, 0.0,
                                  runs)
        written = {(source, layer) for source, _l, run_id, _r, _d in todo
                   for layer in store.records.layers_written(run_id, source)}
        readers = [r for p in todo for r in p[3]]
        slots = {r.key: (info.d_mlp if r.sae is None else r.sae.d_sae) for r in readers}
        ckpt_id = todo[0][2] if len(todo) == 1 else run_id_of(info.model_id, corpus.info.corpus_id, w_hash,
                                                             sorted(p[2] for p in todo))
        workers = 1 if executor is None else executor.workers
        base = in_use(job.device)
        forward = probe_forward(subject, windows, sorted({(r.layer, r.site) for r in readers}),
                                cfg.batch_for(job.device), cfg.seq_len, job.device)
        plan = plan_harvest(job, cfg, slots, len(table_ids), n_tokens, workers, written,
                            begun_passes(ckpt_dir, ckpt_id) if ckpt_dir.exists() else [], db, forward, base)
        progress.note(describe_plan(plan))  # before anything is written: a refusal above leaves the file as it was
        vocab = subject.tokenizer.batch_decode([[i] for i in range(len(subject.tokenizer))],
                                               clean_up_tokenization_spaces=False)
        store.catalog.put_model(info, vocab, subject.vocab_bytes)
        store.catalog.put_corpus(corpus.info, corpus.documents)
        for source, layers, run_id, _r, d in todo:
            if d is not None:
                store.catalog.put_dictionary(dictionary_info(d, info.model_id))
            store.runs.begin(run_id, info.model_id, corpus.info.corpus_id, layers,
                             params if d is None else {**params, "layers": layers, "source": source}, CODE_VERSION,
                             w_hash, windows, source=source)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    run_of = {p[0]: p[2] for p in todo}
    what = ", ".join(f"{p[0]} L{fmt_layers(p[1])}" for p in todo)
    resuming = (f" ({len(written)} layer{'s' if len(written) != 1 else ''} already written: resuming)" if written
                else " (resuming)" if any(ckpt_dir.glob(f"{ckpt_id}.*.pt")) else "")
    progress.note(f"harvest {info.name}: {what}; {len(windows):,} windows / {n_tokens:,} tokens of "
                  f"{corpus.info.corpus_id}{resuming}")
    t1 = time.time()
    task = PassTask(ModelHandle(info.name, info.model_id, job.device, loaded=subject if executor is None else None),
                    cfg, windows, readers, row_of, len(table_ids), salts_of(readers), job.device, ckpt_dir, ckpt_id,
                    to_cpu=executor is not None)
    lengths = RecordRepo.lengths_of({w.window_id: len(w.token_ids) for w in windows})
    writing = 0.0
    try:
        for p, state in run_passes(task, plan, slots, executor, progress, info.name):
            w0 = time.time()
            with open_store(db) as store:
                for key in p.slots:
                    if key not in written:  # each slot written, then freed: one slot's rows at a time
                        summary = summarise_slot(state, key, table_ids)
                        del state.layers[key]
                        store.records.put_layer(run_of[key[0]], key[0], summary, lengths)
                        del summary
            state = None
            writing += time.time() - w0
            path, _id = task.checkpoint_of(p.slots)
            for f in (path, path.with_suffix(".slots.json")):
                f.unlink(missing_ok=True)
    except KeyboardInterrupt:
        progress.note(f"\ninterrupted: written layers are in {db} and the pass is checkpointed in {ckpt_dir}; run "
                      "the same command again to resume")
        raise
    t2 = time.time()
    with open_store(db) as store:
        for source, _layers, run_id, _r, _d in todo:
            store.runs.finish(run_id)
    for f in ckpt_dir.glob(f"{ckpt_id}.*"):
        f.unlink(missing_ok=True)
    if not any(ckpt_dir.iterdir()):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    n_units = sum(slots.values())
    harvesting = t2 - t1 - writing
    progress.note(f"done: {n_tokens:,} tokens x {n_units:,} units in {t2 - t0:.0f} s (load {t1 - t0:.0f} s, harvest "
                  f"{harvesting:.0f} s = {n_tokens / max(harvesting, 1e-9):.0f} tok/s in "
                  f"{len(plan.passes)} pass{'es' if len(plan.passes) > 1 else ''}, write {writing:.0f} s; peak memory "
                  f"{fmt_bytes(peak_rss())}) -> {db}")
    return HarvestSummary(planned[0][2], "done", sorted({l for p in planned for l in p[1]}), n_tokens, t2 - t0, runs)
