"""The CLI, and the one place that wires analysis jobs to the cache: ``python -m analysis <command> --help``."""

from __future__ import annotations

import argparse
import functools
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
        "neuron_id": {"layer_index": rec.layer, "neuron_index": rec.unit.index},
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


def _load_unit(store, model: str, layer: int, neuron: int, run_id: str | None = None):
    """(run, NeuronRecord) of a harvested unit, or UserError saying what is missing."""
    info = store.model(model)
    if info is None:
        known = ", ".join(sorted({m.name for m in store.models()})) or "none yet"
        raise UserError(f"model {model!r} is not in {store.path} (cached models: {known})")
    if not 0 <= layer < info.n_layers:
        raise UserError(f"layer {layer} does not exist: {info.name} has layers 0..{info.n_layers - 1}")
    if not 0 <= neuron < info.d_mlp:
        raise UserError(f"neuron {neuron} does not exist: {info.name} has neurons 0..{info.d_mlp - 1}")
    run = store.run(run_id) if run_id else store.find_run(model, layer)
    if run is None:
        raise UserError(f"layer {layer} of {model} has not been harvested into {store.path}; run: "
                        f"python -m analysis harvest --model {model} --layers {layer} --db {store.path}")
    return run, store.neuron_record(run, layer, neuron)


def cmd_export(args) -> int:
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        _run, rec = _load_unit(store, args.model, args.layer, args.neuron, args.run)
    json.dump(record_to_json(rec), sys.stdout, ensure_ascii=False, indent=None if args.compact else 1)
    sys.stdout.write("\n")
    return 0


def parse_units(spec: str, d_mlp: int) -> list[int]:
    """'0-99', '3,5,8' or '7' -> sorted neuron list."""
    units: set[int] = set()
    try:
        for part in spec.split(","):
            if "-" in part.strip():
                a, b = part.split("-")
                units.update(range(int(a), int(b) + 1))
            elif part.strip():
                units.add(int(part))
    except ValueError:
        raise UserError(f"--neurons {spec!r}: use a list like 3,5,8 or a range like 0-99") from None
    bad = sorted(u for u in units if not 0 <= u < d_mlp)
    if bad or not units:
        raise UserError(f"--neurons {spec!r}: neurons go from 0 to {d_mlp - 1}")
    return sorted(units)


def _api_config(args):
    from analysis.explain import ApiConfig

    if not args.api_base_url or not args.api_model:
        raise UserError("the api explainer/simulator needs --api-base-url and --api-model (key from $" + args.api_key_env + ")")
    return ApiConfig(base_url=args.api_base_url, model=args.api_model, key_env=args.api_key_env,
                     timeout_s=args.api_timeout, max_retries=args.api_retries)


def make_explainer(args):
    from analysis import explain

    if args.explainer == "token-lookup":
        return explain.TokenLookupExplainer()
    if args.explainer == "local":
        from analysis.models import load_model

        return explain.LocalExplainer(load_model(args.explainer_model, device=args.device))
    if args.explainer == "api":
        return explain.ApiExplainer(_api_config(args))
    raise UserError(f"unknown explainer {args.explainer!r}")


def make_simulator(args, rec):
    from analysis import simulate

    if args.simulator == "token-lookup":
        from analysis.evaluate import token_lookup_simulator

        return token_lookup_simulator(rec)
    if args.simulator == "local-all-at-once":
        return simulate.LocalAllAtOnceSimulator(_simulator_subject(args.simulator_model, args.device, args.simulator_dtype))
    if args.simulator == "api-json":
        return simulate.ApiJsonSimulator(_api_config(args))
    raise UserError(f"unknown simulator {args.simulator!r}")


@functools.lru_cache(maxsize=1)
def _simulator_subject(name: str, device: str, dtype: str):
    """The local simulator's model, loaded once per process (every unit of a run shares it)."""
    import torch

    from analysis.models import load_model

    return load_model(name, device=device, dtype=getattr(torch, dtype))


def _map(fn, items: list, workers: int):
    """Yield (item, result, UserError or None) as each finishes; at most ``workers`` run at once (API calls)."""
    if workers <= 1:
        for item in items:
            try:
                yield item, fn(item), None
            except UserError as exc:
                yield item, None, exc
        return
    from concurrent.futures import ThreadPoolExecutor, as_completed

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(fn, item): item for item in items}
        for fut in as_completed(futures):
            exc = fut.exception()
            if exc is not None and not isinstance(exc, UserError):
                raise exc
            yield futures[fut], (None if exc else fut.result()), exc


def _unit_records(args, units: list[int]) -> dict:
    """unit -> (run, NeuronRecord), read in one short read-only visit."""
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        return {u: _load_unit(store, args.model, args.layer, u) for u in units}


def cmd_explain(args) -> int:
    from tqdm import tqdm

    from analysis.evaluate import train_records
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        info = store.model(args.model)
        if info is None:
            raise UserError(f"model {args.model!r} is not in {args.db}")
        units = parse_units(args.neurons, info.d_mlp)
    if args.revise and args.explainer not in ("api", "local"):
        raise UserError("--revise needs a model explainer (local or api)")
    loaded = _unit_records(args, units)
    with open_store(args.db, read_only=True) as store:  # resumable: skip units this explainer already did
        todo = [u for u in units if args.force or not any(
            e.explainer == args.explainer for e in store.explanations(loaded[u][0].run_id, args.layer, u))]
    explainer = make_explainer(args) if todo else None  # loads a model only when there is work
    workers = args.api_concurrency if args.explainer == "api" else 1
    done = failed = 0
    bar = tqdm(total=len(todo), desc=f"explain L{args.layer} ({args.explainer})", unit="neuron", disable=args.quiet)
    from analysis.explain import RevisingExplainer

    def work(u):
        rec = loaded[u][1]
        if args.revise:
            return RevisingExplainer(explainer).explain_both(train_records(rec), rec.stats.max)
        return (explainer.explain(train_records(rec), rec.stats.max),)

    for unit, exps, err in _map(work, todo, workers):
        bar.update(1)
        if err is not None:
            failed += 1
            print(f"neuron {unit}: {err}", file=sys.stderr)
            continue
        with open_store(args.db) as store:  # the main thread does all writing, one short transaction each
            for exp in exps:
                store.put_explanation(loaded[unit][0].run_id, args.layer, unit, exp.explainer, exp.params, exp.text)
        done += 1
        if len(units) == 1 and not args.quiet:
            print("\n".join(e.text for e in exps))
    bar.close()
    print(f"explained {done} neuron(s) with {args.explainer}" + (f", {failed} failed" if failed else ""), file=sys.stderr)
    return 0 if not failed else 1


def cmd_score(args) -> int:
    from tqdm import tqdm

    from analysis.evaluate import score_simulation, scoring_records
    from analysis.explain import HumanExplainer
    from cache.store import open_store

    if args.neuron is None and not args.neurons:
        raise UserError("give --neuron N or --neurons SPEC")
    with open_store(args.db, read_only=True) as store:
        info = store.model(args.model)
        if info is None:
            raise UserError(f"model {args.model!r} is not in {args.db}")
    units = parse_units(args.neurons if args.neurons else str(args.neuron), info.d_mlp)
    loaded = _unit_records(args, units)
    jobs = []  # (unit, explanation id, text)
    if args.explanation:
        text = HumanExplainer(args.explanation).explain([], 0.0).text
        with open_store(args.db) as store:
            for u in units:
                jobs.append((u, store.put_explanation(loaded[u][0].run_id, args.layer, u, "human", {}, text), text))
    else:
        with open_store(args.db, read_only=True) as store:
            for u in units:
                for e in store.explanations(loaded[u][0].run_id, args.layer, u):
                    if e.explainer == "n2g":  # a graph summary, not text to simulate: `n2g` scores it
                        continue
                    if args.force or not store.has_simulation(e.explanation_id, args.simulator, args.set):
                        jobs.append((u, e.explanation_id, e.text))
    simulators = {u: make_simulator(args, loaded[u][1]) for u in {j[0] for j in jobs}}

    def run(job):
        u, _eid, text = job
        rec = loaded[u][1]
        return score_simulation(simulators[u], text, scoring_records(rec, args.set), rec.stats.max, args.set)

    workers = args.api_concurrency if args.simulator == "api-json" else 1
    results = []
    bar = tqdm(total=len(jobs), desc=f"score L{args.layer} ({args.simulator})", unit="explanation",
               disable=args.quiet or len(jobs) <= 1)
    for (u, eid, _text), scored, err in _map(run, jobs, workers):
        bar.update(1)
        if err is not None:
            print(f"neuron {u}: {err}", file=sys.stderr)
            continue
        with open_store(args.db) as store:
            store.put_simulation(eid, scored)
        results.append(scored)
        if scored.error:
            print(f"neuron {u}: simulation failed: {scored.error}", file=sys.stderr)
    bar.close()
    if args.json:
        json.dump(results[0].to_json() if len(results) == 1 else [r.to_json() for r in results], sys.stdout,
                  ensure_ascii=False)
        sys.stdout.write("\n")
    elif not args.quiet:
        for r in results:
            print(f"{r.score if r.score is not None else float('nan'):+.3f}  {r.simulator:18s} {r.scoring_set:15s} {r.explanation}")
    if not results and not jobs:
        print("nothing to score: no explanation without a score for this simulator and set "
              "(explain first, pass --explanation, or --force)", file=sys.stderr)
    return 1 if any(r.error for r in results) or len(results) < len(jobs) else 0


def cmd_n2g(args) -> int:
    import torch
    from tqdm import tqdm

    from analysis.evaluate import score_simulation, scoring_records
    from analysis.models import load_model
    from analysis.n2g.fit import N2GConfig, ModelProber
    from analysis.n2g.pipeline import N2GSimulator, describe, evaluate, fit_layer, graph_of
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        info = store.model(args.model)
        if info is None:
            raise UserError(f"model {args.model!r} is not in {args.db}")
    units = list(range(info.d_mlp)) if args.neurons.strip().lower() == "all" else parse_units(args.neurons, info.d_mlp)
    loaded = _unit_records(args, units)
    run_id = loaded[units[0]][0].run_id
    with open_store(args.db, read_only=True) as store:
        done = set() if args.force else store.n2g_units(run_id, args.layer)
    todo = [u for u in units if u not in done]
    config = N2GConfig(augment=not args.no_augment)
    results = {}
    if todo:
        subject = load_model(info.name, device=args.device, dtype=getattr(torch, args.dtype))
        if subject.info.model_id != info.model_id:
            raise UserError(f"{info.name} now loads weights {subject.info.model_id}, but the cache was harvested "
                            f"from {info.model_id}: harvest again, or restore those weights")
        vocab = lambda t: subject.tokenizer.decode([t])  # noqa: E731
        bar = tqdm(total=len(todo), desc=f"n2g L{args.layer}", unit="neuron", disable=args.quiet)
        prober = ModelProber(subject, args.layer)
        params = {**config.to_json(), "dtype": args.dtype}
        for chunk in fit_layer(subject, args.layer, [loaded[u][1] for u in todo], config, args.chunk, prober):
            with open_store(args.db) as store:  # one short write per chunk: an interrupt loses at most a chunk
                for r in chunk:
                    r.params = params
                store.put_n2g(run_id, chunk)
                for r in chunk:  # the graph as a simulator, scored like the explanations
                    rec = loaded[r.unit][1]
                    names = {t: vocab(t) for p, _v in r.graph.patterns() for t in p if t >= 0}
                    eid = store.put_explanation(run_id, args.layer, r.unit, "n2g", params,
                                                describe(r.graph, names))
                    sim = N2GSimulator(r.graph, rec.stats.max, params)
                    store.put_simulation(eid, score_simulation(sim, "", scoring_records(rec, "top-and-random"),
                                                               rec.stats.max, "top-and-random"))
            results.update((r.unit, r) for r in chunk)
            bar.update(len(chunk))
        bar.close()
    if args.json:
        with open_store(args.db, read_only=True) as store:
            for u in units:
                if u not in results:
                    g = store.n2g_graph(run_id, args.layer, u)
                    results[u] = evaluate(args.layer, loaded[u][1], graph_of(g.patterns), g.params, g.seconds)
        json.dump({"neurons": [results[u].to_json() for u in units]}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif not args.quiet:
        for u in units:
            if u in results:
                r = results[u]
                print(f"L{args.layer} N{u}: firing P/R/F1 {r.firing.precision:.2f}/{r.firing.recall:.2f}/"
                      f"{r.firing.f1:.2f} (token-lookup {r.baseline_firing.f1:.2f}), "
                      f"{len(r.graph.patterns())} patterns", file=sys.stderr)
    print(f"n2g: {len(todo)} graph(s) built, {len(units) - len(todo)} already in the cache", file=sys.stderr)
    return 0


TOPIC_SOURCES = ("hi-c", "hi-i", "lo-c", "lo-i", "activation")


def npmi_stats(db: str, corpora: list[str], window: int, min_count: int, quiet: bool = False):
    """The reference corpus co-occurrence statistics, counted once and kept next to the database."""
    from analysis.topics import NpmiConfig, load_stats, reference_stats, save_stats, stats_params

    config = NpmiConfig(corpora=tuple(corpora), window=window, min_count=min_count)
    digest = hashlib.sha256(json.dumps([config.corpora, window, min_count]).encode()).hexdigest()[:12]
    path = Path(str(db) + ".topics") / f"npmi-{digest}.npz"
    if path.exists():
        stats = load_stats(path)
    else:
        stats = reference_stats(config, progress=not quiet)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_stats(stats, path)
    if stats.n_windows < 100 or len(stats.vocab) < 20:
        print(f"warning: the reference corpus is tiny ({stats.n_windows} windows, {len(stats.vocab)} words of "
              f">= {min_count} occurrences): NPMI will be noisy", file=sys.stderr)
    stats_id = hashlib.sha256(json.dumps(stats_params(stats), sort_keys=True).encode()).hexdigest()[:12]
    return stats, stats_id


def topic_set_json(ts) -> dict:
    return {"neuron": ts.unit, "layer": ts.layer, "mode": ts.source, "polarity": ts.polarity, "pool": ts.pool,
            "reason": ts.reason, "random_scores": ts.random_scores,
            "stars": [{"words": w, "npmi": m.tolist()} for w, m in ts.stars],
            "topics": [{"words": t.words, "score": t.score, "star": t.star, "optimal": t.optimal} for t in ts.topics]}


def cmd_topics(args) -> int:
    import torch
    from tqdm import tqdm

    from analysis.explain import token_means
    from analysis.models import load_model
    from analysis.topics import (Polarity, ProjectionMode, TopicConfig, activation_ranking, random_topic_scores,
                                 topics_for_units, topics_from_ranking)
    from cache.store import open_store

    sources = TOPIC_SOURCES if args.mode == "all" else tuple(m.strip() for m in args.mode.split(","))
    bad = [m for m in sources if m not in TOPIC_SOURCES]
    if bad:
        raise UserError(f"--mode {args.mode!r}: use 'all' or some of {', '.join(TOPIC_SOURCES)}")
    try:
        config = TopicConfig(k=args.k, tau=args.tau)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    with open_store(args.db, read_only=True) as store:
        info = store.model(args.model)
        if info is None:
            raise UserError(f"model {args.model!r} is not in {args.db}")
        run = store.find_run(args.model, args.layer)
    if not 0 <= args.layer < info.n_layers:
        raise UserError(f"layer {args.layer} does not exist: {info.name} has layers 0..{info.n_layers - 1}")
    stats, stats_id = npmi_stats(args.db, [c.strip() for c in args.corpus.split(",")], args.window,
                                 args.min_count, args.quiet)
    subject = load_model(info.name, device=args.device, dtype=torch.float32)
    if subject.info.model_id != info.model_id:
        raise UserError(f"{info.name} now loads weights {subject.info.model_id}, not the cached {info.model_id}")
    d_model = subject.w_out(0).shape[1]
    params = {"k": config.k, "tau": config.tau, "theta_l": config.theta_l, "theta_u": config.theta_u,
              "kappa_u": config.kappa_u, "stats": stats_id, "corpus": stats.corpus_id, "window": stats.window,
              "min_count": stats.min_count}
    with open_store(args.db, read_only=True) as store:
        done = set() if args.force else store.topic_keys(info.model_id, stats_id, args.layer)
    keys = []  # (source, units)
    for source in sources:
        n = d_model if source in ("lo-c", "lo-i") else info.d_mlp
        kind = "residual dimensions" if n == d_model and source.startswith("lo") else "neurons"
        if args.neurons.strip().lower() == "all":
            units = list(range(n))
        else:
            try:
                units = parse_units(args.neurons, n)
            except UserError:
                raise UserError(f"--neurons {args.neurons!r}: {source} takes {kind} 0..{n - 1}") from None
        if source == "activation" and run is None:
            raise UserError(f"the activation source needs a harvest of layer {args.layer} in {args.db}")
        keys.append((source, units))
    total = sum(len(u) for _s, u in keys)
    bar = tqdm(total=total, desc=f"topics L{args.layer}", unit="unit", disable=args.quiet)
    for source, units in keys:
        todo = [u for u in units if any((u, source, p) not in done for p in ("pos", "neg"))]
        bar.update(len(units) - len(todo))
        for b in range(0, len(todo), args.chunk):
            chunk = todo[b : b + args.chunk]
            t0 = time.perf_counter()
            if source == "activation":
                results = []
                recs = _unit_records(argparse.Namespace(db=args.db, model=args.model, layer=args.layer), chunk)
                for u in chunk:
                    rec = recs[u][1]
                    table = {tid: m for (tid, _t), (m, _c) in token_means(
                        rec.most_positive_activation_records + rec.random_sample
                        + [r for b_ in rec.random_sample_by_quantile for r in b_]).items()}
                    table.update({tid: m for tid, _t, m, _c in rec.top_tokens})
                    for pol in (Polarity.POS, Polarity.NEG):
                        ranking = activation_ranking(list(table.items()), args.layer, u, pol, tau=config.tau)
                        results.append(topics_from_ranking(ranking, subject.tokenizer, stats, config))
            else:
                results = topics_for_units(subject, args.layer, chunk, ProjectionMode(source), stats, config)
            per = (time.perf_counter() - t0) / max(len(results), 1)
            rows = [(nt, random_topic_scores(nt.pool.words, stats, config.k, 100, seed=nt.unit), per)
                    for nt in results]
            with open_store(args.db) as store:
                store.put_topics(info.model_id, stats_id, rows, params)
            bar.update(len(chunk))
    bar.close()
    with open_store(args.db, read_only=True) as store:
        sets = [ts for source, units in keys for u in units for ts in store.topic_sets(info.model_id, args.layer, u, source)
                if ts.params.get("stats") == stats_id]
    if args.json:
        json.dump({"results": [topic_set_json(ts) for ts in sets]}, sys.stdout, ensure_ascii=False)
        sys.stdout.write("\n")
    elif not args.quiet and len(sets) <= 20:
        for ts in sets:
            best = ts.topics[0] if ts.topics else None
            print(f"L{ts.layer} {ts.source} {ts.unit} {ts.polarity}: " + (
                f"{best.score:+.3f} {' '.join(best.words)}" if best else f"no topic ({ts.reason})"), file=sys.stderr)
    with_topic = sum(bool(ts.topics) for ts in sets)
    print(f"topics: {len(sets)} unit-polarities, {with_topic} with at least one topic "
          f"(NPMI from {stats.corpus_id}, {stats.n_windows:,} windows)", file=sys.stderr)
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

    def api_args(p):
        p.add_argument("--api-base-url", default=None, help="OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1")
        p.add_argument("--api-model", default=None, help="model name at that endpoint")
        p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
        p.add_argument("--api-timeout", type=float, default=60.0, help="seconds per request (default: %(default)s)")
        p.add_argument("--api-retries", type=int, default=4, help="retries with backoff on 429/5xx/timeouts")
        p.add_argument("--api-concurrency", type=int, default=4, help="requests in flight at once (default: %(default)s)")

    def unit_job_args(p):
        """What explain and score share: the database, the units, the device, and how to run."""
        db_arg(p)
        p.add_argument("--model", default=DEFAULT_MODEL, help="model name as cached")
        p.add_argument("--layer", type=int, required=True)
        p.add_argument("--device", default="cpu")
        p.add_argument("--quiet", action="store_true")
        api_args(p)

    x = sub.add_parser("explain", help="explain neurons from their top train records (resumable)")
    unit_job_args(x)
    x.add_argument("--neurons", required=True, help="e.g. 0-99 or 3,5,8")
    x.add_argument("--explainer", choices=["local", "api", "token-lookup"], default="token-lookup")
    x.add_argument("--explainer-model", default=DEFAULT_MODEL, help="local explainer model (default: %(default)s)")
    x.add_argument("--force", action="store_true", help="explain again even if this explainer already did")
    x.add_argument("--revise", action="store_true", help="also store a revised explanation (the paper's revision step)")
    x.set_defaults(func=cmd_explain)

    sc = sub.add_parser("score", help="simulate explanations on held-out records and score them (resumable)")
    unit_job_args(sc)
    sc.add_argument("--neuron", type=int, default=None)
    sc.add_argument("--neurons", default=None, help="many neurons, e.g. 0-99")
    sc.add_argument("--explanation", default=None, help="score (and store) this explanation instead of the stored ones")
    sc.add_argument("--simulator", choices=["local-all-at-once", "api-json", "token-lookup"], default="token-lookup")
    sc.add_argument("--simulator-model", default=DEFAULT_MODEL, help="local simulator model (default: %(default)s)")
    sc.add_argument("--simulator-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16 simulates ~2x faster on CPUs with AVX512-BF16, at bf16 precision")
    sc.add_argument("--set", choices=["top-and-random", "random-only"], default="top-and-random")
    sc.add_argument("--force", action="store_true", help="score again even if already scored")
    sc.add_argument("--json", action="store_true", help="print the scored simulation(s) as JSON")
    sc.set_defaults(func=cmd_score)

    n = sub.add_parser("n2g", help="Neuron2Graph: fit, score and store a graph per neuron (resumable)",
                       description="Prune, saliency, augmentation with the model's own substitutes, trie; scored on "
                                   "held-out top records (firing P/R/F1 vs token-lookup) and as the 'n2g' simulator.")
    db_arg(n)
    n.add_argument("--model", default=DEFAULT_MODEL, help="model name as cached")
    n.add_argument("--layer", type=int, required=True)
    n.add_argument("--neurons", default="all", help="'all', e.g. 0-99 or 3,5,8 (default: %(default)s)")
    n.add_argument("--no-augment", action="store_true", help="skip augmentation (faster, less general graphs)")
    n.add_argument("--chunk", type=int, default=32, help="neurons fitted together, stored together (default: %(default)s)")
    n.add_argument("--device", default="cpu")
    n.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                   help="bfloat16 is ~2x faster on CPUs with AVX512-BF16, at bf16 precision")
    n.add_argument("--force", action="store_true", help="rebuild graphs already in the cache")
    n.add_argument("--json", action="store_true", help="print graphs' held-out records and metrics as JSON")
    n.add_argument("--quiet", action="store_true")
    n.set_defaults(func=cmd_n2g)

    t = sub.add_parser("topics", help="word-pool topics per neuron (Lim & Lauw): exact, stored, resumable",
                       description="Project units onto the vocabulary (hi-c, hi-i: neurons; lo-c, lo-i: residual "
                                   "dimensions) or rank tokens by harvested activation; pool corpus words; NPMI "
                                   "graph from the reference corpus; star heuristic; exact max-weight k-cliques.")
    db_arg(t)
    t.add_argument("--model", default=DEFAULT_MODEL, help="model name as cached")
    t.add_argument("--layer", type=int, required=True)
    t.add_argument("--neurons", default="all", help="'all', 0-99 or 3,5,8 (residual dimensions for lo-*)")
    t.add_argument("--mode", default="all", help=f"'all' or a list of {', '.join(TOPIC_SOURCES)} (default: all)")
    t.add_argument("--tau", type=int, default=900, help="tokens taken from each end of a ranking (default: %(default)s)")
    t.add_argument("--k", type=int, default=10, help="words per topic (default: %(default)s)")
    t.add_argument("--corpus", default="enwiki-sample,lee-background",
                   help="reference corpora for NPMI: embedded names or paths, comma-separated (default: %(default)s)")
    t.add_argument("--window", type=int, default=10, help="co-occurrence window in words (default: %(default)s)")
    t.add_argument("--min-count", type=int, default=5, help="fewest corpus occurrences of a word (default: %(default)s)")
    t.add_argument("--chunk", type=int, default=256, help="units per batch and per write (default: %(default)s)")
    t.add_argument("--device", default="cpu")
    t.add_argument("--force", action="store_true", help="recompute units already in the cache")
    t.add_argument("--json", action="store_true", help="print pools, stars (full NPMI matrices) and topics as JSON")
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=cmd_topics)

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
