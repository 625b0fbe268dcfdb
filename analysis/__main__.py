"""The CLI, and the one place that wires analysis jobs to the cache: ``python -m analysis <command> --help``."""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from analysis.config import CODE_VERSION, DEFAULT_CORPUS, DEFAULT_MODEL, default_db
from analysis.types import UserError


def parse_layers(spec: str, n_layers: int) -> list[int]:
    """'all', '5', '0,5,10' or '0-3,7' -> sorted layer list, checked against the model."""
    if spec.strip().lower() == "all":
        return list(range(n_layers))
    layers: set[int] = set()
    try:
        for part in spec.split(","):
            part = part.strip()
            if "-" in part:
                a, b = part.split("-")
                layers.update(range(int(a), int(b) + 1))
            elif part:
                layers.add(int(part))
    except ValueError:
        raise UserError(f"--layers {spec!r}: use 'all', a list like 0,5,10 or a range like 0-3") from None
    bad = [l for l in layers if not 0 <= l < n_layers]
    if bad or not layers:
        raise UserError(f"--layers {spec!r}: the model has layers 0..{n_layers - 1}")
    return sorted(layers)


def _decode_vocab(tokenizer) -> list[str]:
    n = len(tokenizer)
    return tokenizer.batch_decode([[i] for i in range(n)], clean_up_tokenization_spaces=False)


def cmd_harvest(args) -> int:
    import torch

    from analysis.corpus import load_corpus, make_windows, select_windows, windows_hash
    from analysis.harvest import HarvestConfig, run_harvest, summarise
    from analysis.models import load_model
    from cache.store import open_store

    if args.max_tokens is not None and args.max_tokens <= 0:
        raise UserError("--max-tokens must be a positive number of tokens")
    if args.top_k < 1 or args.batch_size < 1 or args.seq_len < 1:
        raise UserError("--top-k, --batch-size and --seq-len must be at least 1")
    db = Path(args.db)
    with open_store(db) as store:  # fail fast on a bad path, a corrupt file or another schema version
        if args.skip_if_cached:
            cached = _cached_run(store, args)
            if cached is not None:
                print(f"{db} already holds run {cached.run_id} of {args.model} on {cached.corpus_id} "
                      f"({cached.n_tokens:,} tokens, layers {_fmt_layers(cached.layers)}): nothing to do", file=sys.stderr)
                return 0
    torch.set_num_threads(max(1, torch.get_num_threads()))
    t0 = time.time()
    subject = load_model(args.model, device=args.device)
    layers = parse_layers(args.layers, subject.info.n_layers)
    corpus = load_corpus(args.corpus)
    windows = list(make_windows(corpus.documents, subject.tokenizer, args.seq_len))
    windows = select_windows(windows, args.max_tokens, seed=args.seed)
    if not windows:
        raise UserError(f"corpus {args.corpus!r} gives no windows of at least {max(1, args.seq_len // 4)} tokens")
    config = HarvestConfig(layers=tuple(layers), seq_len=args.seq_len, top_k=args.top_k, batch_size=args.batch_size,
                           shard_windows=args.shard_windows, seed=args.seed)
    params = {k: v for k, v in asdict(config).items() if k not in ("batch_size", "shard_windows")}
    params["max_tokens"] = args.max_tokens
    w_hash = windows_hash(windows)
    run_id = hashlib.sha256(json.dumps([subject.info.model_id, corpus.info.corpus_id, w_hash, params],
                                       sort_keys=True).encode()).hexdigest()[:16]
    with open_store(db) as store:
        existing = store.run(run_id)
        if existing is not None and existing.status == "done":
            print(f"already harvested: run {run_id} ({existing.n_tokens:,} tokens, layers {_fmt_layers(existing.layers)}) "
                  f"in {db}", file=sys.stderr)
            return 0
        store.put_model(subject.info, _decode_vocab(subject.tokenizer))
        store.put_corpus(corpus.info, corpus.documents)
        store.begin_run(run_id, subject.info.model_id, corpus.info.corpus_id, layers, params, w_hash, windows, CODE_VERSION)
    ckpt_dir = db.with_name(db.name + ".harvest")
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    ckpt = ckpt_dir / f"{run_id}.pt"
    n_tokens = sum(len(w.token_ids) for w in windows)
    print(f"run {run_id}: {subject.info.name}, layers {_fmt_layers(layers)}, {len(windows):,} windows / {n_tokens:,} tokens "
          f"of {corpus.info.corpus_id}" + (" (resuming)" if ckpt.exists() else ""), file=sys.stderr)
    t1 = time.time()
    try:
        state, table_ids = run_harvest(subject, windows, config, checkpoint=ckpt, run_id=run_id, device=args.device,
                                       progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"\ninterrupted: finished shards are checkpointed in {ckpt}; run the same command again to resume",
              file=sys.stderr)
        return 130
    t2 = time.time()
    summaries = summarise(state, table_ids)
    lengths = {w.window_id: len(w.token_ids) for w in windows}
    with open_store(db) as store:
        store.put_results(run_id, summaries, lengths)
    ckpt.unlink(missing_ok=True)
    if not any(ckpt_dir.iterdir()):
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    t3 = time.time()
    print(f"done: {n_tokens:,} tokens x {len(layers)} layers x {subject.info.d_mlp} neurons in {t3 - t0:.0f} s "
          f"(load {t1 - t0:.0f} s, harvest {t2 - t1:.0f} s = {n_tokens / max(t2 - t1, 1e-9):.0f} tok/s, "
          f"write {t3 - t2:.0f} s) -> {db}", file=sys.stderr)
    return 0


def _cached_run(store, args):
    """A finished run of the same model name and corpus covering the asked layers, without loading anything."""
    from analysis.corpus import EMBEDDED_CORPORA

    model = store.model(args.model)
    if model is None:
        return None
    layers = parse_layers(args.layers, model.n_layers)
    corpus = args.corpus if args.corpus in EMBEDDED_CORPORA else None
    for run in store.runs():
        if (run.status == "done" and store.model(run.model_id).name == args.model and set(layers) <= set(run.layers)
                and (corpus is None or run.corpus_id == corpus) and run.params.get("max_tokens") == args.max_tokens):
            return run
    return None


def _fmt_layers(layers: list[int]) -> str:
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ",".join(map(str, layers))


def record_to_json(rec) -> dict:
    """OpenAI NeuronRecord field names, plus our extras."""

    def ar(r):
        return {"tokens": r.tokens, "activations": [round(a, 5) for a in r.activations], "token_ids": r.token_ids,
                "window_id": r.window_id, "doc_id": r.doc_id, "offset": r.offset}

    st = rec.stats
    return {
        "neuron_id": {"layer_index": rec.layer, "neuron_index": rec.neuron},
        "most_positive_activation_records": [ar(r) for r in rec.most_positive_activation_records],
        "random_sample": [ar(r) for r in rec.random_sample],
        "random_sample_by_quantile": [[ar(r) for r in b] for b in rec.random_sample_by_quantile],
        "quantile_boundaries": rec.quantile_boundaries,
        "mean": st.mean, "variance": st.std ** 2, "stddev": st.std, "skewness": st.skewness, "kurtosis": st.kurtosis,
        "max_activation": st.max, "min_activation": st.min, "frac_active": st.frac_active, "n_tokens": st.n_tokens,
        "histogram": {"counts": st.hist_counts, "bin_edges": st.hist_edges,
                      "note": "log-scale bins by magnitude (float16 high byte); each bin's two edges, the first nearer 0"},
        "top_tokens": [{"token_id": t, "token": s, "mean_activation": m, "count": c} for t, s, m, c in rec.top_tokens],
        "model_id": rec.model_id, "corpus_id": rec.corpus_id, "run_id": rec.run_id, "hook_point": rec.hook_point,
    }


def cmd_export(args) -> int:
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        model = store.model(args.model)
        if model is None:
            known = ", ".join(sorted({m.name for m in store.models()})) or "none yet"
            raise UserError(f"model {args.model!r} is not in {args.db} (cached models: {known})")
        if not 0 <= args.layer < model.n_layers:
            raise UserError(f"layer {args.layer} does not exist: {model.name} has layers 0..{model.n_layers - 1}")
        if not 0 <= args.neuron < model.d_mlp:
            raise UserError(f"neuron {args.neuron} does not exist: {model.name} has neurons 0..{model.d_mlp - 1}")
        run = store.run(args.run) if args.run else store.find_run(args.model, args.layer)
        if run is None:
            raise UserError(f"layer {args.layer} of {args.model} has not been harvested into {args.db}; run: "
                            f"python -m analysis harvest --model {args.model} --layers {args.layer} --db {args.db}")
        rec = store.neuron_record(run, args.layer, args.neuron)
    json.dump(record_to_json(rec), sys.stdout, ensure_ascii=False, indent=None if args.compact else 1)
    sys.stdout.write("\n")
    return 0


def cmd_models(args) -> int:
    from analysis.models import embedded_status
    from cache.store import open_store

    print("embedded models (offline):")
    for row in embedded_status():
        state = "converted" if row["converted"] else ("installed" if row["installed"] else f"not installed: {row['install']}")
        print(f"  {row['name']:14s} {state:10s} {row['description']}")
    print("also accepted: a local HF folder, a .gguf file, or a hub id such as gpt2 (network needed)")
    if Path(args.db).exists():
        with open_store(args.db, read_only=True) as store:
            print(f"cached in {args.db}:")
            for m in store.models():
                runs = [r for r in store.runs(m.model_id)]
                desc = "; ".join(f"run {r.run_id} {r.status} layers {_fmt_layers(r.layers)} {r.n_tokens:,} tok of {r.corpus_id}" for r in runs)
                print(f"  {m.model_id}  {m.architecture}, {m.n_layers} layers x {m.d_mlp} neurons, {m.act_fn}  [{desc}]")
    return 0


def cmd_corpora(args) -> int:
    from analysis.corpus import EMBEDDED_CORPORA
    from cache.store import open_store

    print("embedded corpora (offline):")
    for name, desc in EMBEDDED_CORPORA.items():
        print(f"  {name:15s} {desc}")
    print("also accepted: a .txt file or folder, a .jsonl file (text field), a .parquet file (text column)")
    if Path(args.db).exists():
        with open_store(args.db, read_only=True) as store:
            print(f"cached in {args.db}:")
            for c in store.corpora():
                print(f"  {c.corpus_id}  {c.n_docs} docs, {c.n_chars:,} chars, sha256 {c.text_hash[:12]}")
    return 0


def cmd_migrate(args) -> int:
    from cache.store import migrate_file

    old, new = migrate_file(args.db)
    print(f"{args.db}: schema version {old} -> {new}" if old != new else f"{args.db}: already at schema version {new}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m analysis", description="Neuron viewer: harvest and inspect neurons.")
    sub = parser.add_subparsers(dest="command", required=True)

    def db_arg(p):
        p.add_argument("--db", default=str(default_db()), help="DuckDB file (default: %(default)s)")

    h = sub.add_parser("harvest", help="stream a corpus through a model; store top/random/quantile records and stats",
                       description="One streaming pass: per-neuron top-k windows, random and quantile samples, "
                                   "moments, histogram and per-token means, checkpointed per shard (Ctrl-C, then "
                                   "run again to resume).")
    h.add_argument("--model", default=DEFAULT_MODEL, help="embedded name, HF folder, .gguf file or hub id (default: %(default)s)")
    h.add_argument("--corpus", default=DEFAULT_CORPUS, help="embedded name or a text/JSONL/parquet path (default: %(default)s)")
    db_arg(h)
    h.add_argument("--layers", default="all", help="'all', '0,5,10' or '0-3' (default: %(default)s)")
    h.add_argument("--max-tokens", type=int, default=None, help="harvest a seeded random subset of windows up to this many tokens")
    h.add_argument("--seq-len", type=int, default=64, help="tokens per window (default: %(default)s)")
    h.add_argument("--top-k", type=int, default=20, help="top-activating windows kept per neuron (default: %(default)s)")
    h.add_argument("--batch-size", type=int, default=32, help="windows per forward pass (default: %(default)s)")
    h.add_argument("--shard-windows", type=int, default=2048, help="windows per checkpointed shard (default: %(default)s)")
    h.add_argument("--seed", type=int, default=0, help="seed for window selection and random samples")
    h.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    h.add_argument("--quiet", action="store_true", help="no progress bar")
    h.add_argument("--skip-if-cached", action="store_true",
                   help="do nothing if the db already has a finished run of this model name and corpus with these layers")
    h.set_defaults(func=cmd_harvest)

    e = sub.add_parser("export", help="print a neuron's record as JSON (OpenAI NeuronRecord fields + extras)")
    db_arg(e)
    e.add_argument("--model", default=DEFAULT_MODEL, help="model name or id as cached")
    e.add_argument("--layer", type=int, required=True)
    e.add_argument("--neuron", type=int, required=True)
    e.add_argument("--run", default=None, help="a run id (default: the newest finished run with this layer)")
    e.add_argument("--compact", action="store_true", help="one line of JSON")
    e.set_defaults(func=cmd_export)

    m = sub.add_parser("models", help="list embedded and cached models")
    db_arg(m)
    m.set_defaults(func=cmd_models)
    c = sub.add_parser("corpora", help="list embedded and cached corpora")
    db_arg(c)
    c.set_defaults(func=cmd_corpora)
    g = sub.add_parser("migrate", help="bring a database to the current schema version")
    db_arg(g)
    g.set_defaults(func=cmd_migrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
