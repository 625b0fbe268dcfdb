"""The CLI's commands (``python -m analysis <command>``; the parser is ``analysis/__main__.py``): each builds its
job's config from the parsed options, calls the job's one entry function and prints the typed summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from analysis.jobs.options import from_args
from analysis.types import MLP, UserError

BUDGET_STOP = 3
"""Exit status of a run stopped by its API budget (what is done is stored; rerun to go on)."""


def _api_end(s, args) -> None:
    """The run's API usage and why it stopped early, if it did (explain and score)."""
    if s.usage is not None and not args.quiet:
        print(f"API: {s.usage.text()}", file=sys.stderr)
    if s.stopped:
        print(f"{s.stopped}: stopped with {s.left} left; what is done is stored, rerun to go on", file=sys.stderr)


def _progress(args):
    from analysis.progress import Progress

    return Progress(enabled=not getattr(args, "quiet", False))


def _named(args):
    """``args`` with ``--source`` made the full id of the dictionary it names (its name, ``sae:<name>`` or folder:
    ``analysis.jobs.reads.match_source``), read in one short visit, so jobs and their stored rows see only full
    ids; ``mlp`` and no ``--source`` are left as they are."""
    if getattr(args, "source", None) in (None, MLP):
        return args
    from analysis.jobs.reads import resolve_unit_source
    from cache.store import open_store

    with open_store(Path(args.db), read_only=True) as store:
        args.source = resolve_unit_source(store, args.model, args.source)
    return args


def _print_json(obj) -> None:
    json.dump(obj, sys.stdout, ensure_ascii=False)
    sys.stdout.write("\n")


def cmd_harvest(args) -> int:
    from analysis.jobs.harvest import HarvestJob, harvest

    harvest(from_args(HarvestJob, args), Path(args.db), _progress(args))
    return 0


def cmd_build(args) -> int:
    from analysis.jobs.build.plan import BuildJob
    from analysis.jobs.build.run import build
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

    json.dump(export(from_args(ExportJob, _named(args)), Path(args.db)), sys.stdout, ensure_ascii=False,
              indent=None if args.compact else 1)
    sys.stdout.write("\n")
    return 0


def cmd_explain(args) -> int:
    from analysis.jobs.explain import ExplainJob, explain

    s = explain(from_args(ExplainJob, _named(args)), Path(args.db), _progress(args))
    if len(s.explained) == 1 and not s.failed and not s.skipped and not args.quiet:
        print("\n".join(e.text for exps in s.explained.values() for e in exps))
    print(f"explained {len(s.explained)} neuron(s) with {args.explainer}"
          + (f", {len(s.failed)} failed" if s.failed else ""), file=sys.stderr)
    _api_end(s, args)
    return 1 if s.failed else BUDGET_STOP if s.stopped else 0


def cmd_score(args) -> int:
    from analysis.jobs.score import ScoreJob, score

    if args.neuron is None and not args.neurons:
        raise UserError("give --neuron N or --neurons SPEC")
    job = from_args(ScoreJob, _named(args), neurons=args.neurons or str(args.neuron))
    s = score(job, Path(args.db), _progress(args))
    if args.json:
        _print_json(s.printed[0] if len(s.printed) == 1 else s.printed)
    elif not args.quiet:
        for r in s.printed:
            ci = f" [{r['lo']:+.3f}, {r['hi']:+.3f}]" if r.get("lo") is not None else ""
            who = r.get("simulator") or f"{r['scorer']} ({r['metric'].replace('_', ' ')})"
            print(f"{r['score'] if r['score'] is not None else float('nan'):+.3f}{ci}  {who:18s} "
                  f"{r.get('set', ''):15s} {r['unit']} {r['explanation'] or '(the unit baseline: ignores any explanation)'}"
                  + (" (stored)" if r.get("stored") else ""))
    if not s.printed and not s.todo:
        print("nothing to score: these units have no text explanation (explain first, or pass --explanation)",
              file=sys.stderr)
    _api_end(s, args)
    if any(r.error for r in s.results) or s.failed:
        return 1
    return BUDGET_STOP if s.stopped else 1 if len(s.results) < s.todo else 0


def cmd_n2g(args) -> int:
    from analysis.jobs.n2g import N2GJob, n2g

    s = n2g(from_args(N2GJob, _named(args)), Path(args.db), _progress(args), with_cached=args.json)
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
    s = topics(from_args(TopicsJob, _named(args), modes=modes), Path(args.db), _progress(args))
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
    print(f"{'kind':<10} {'units':>7} {'live':>7} {'sampled':>7} " + " ".join(f"{c[1]:>16}" for c in cols))
    for k in table:
        cells = []
        for name, _title in cols:
            v = k.med(name)
            cells.append(f"{'-' if v is None else f'{v:.3f}':>10} ({k.count(name):>3})")
        print(f"{k.kind:<10} {k.n_units:>7} {k.n_live:>7} {len(k.metrics):>7} " + " ".join(cells))
    print("medians over the sampled units (in brackets: how many have the number)")
    return 0


def cmd_sae_train(args) -> int:
    from analysis.jobs.sae import SaeTrainJob, train_sae

    s = train_sae(from_args(SaeTrainJob, args), _progress(args))
    q = s.quality
    left_out = f" ({q.massive_left_out} massive activations left out)" if q.massive_left_out else ""
    trained = f"; {s.train_tokens:,} training tokens, {s.seconds:.0f} s" if s.status == "done" else ""
    if hasattr(q, "loss_with_error"):  # a transcoder (TranscoderQuality)
        print(f"{s.out}: FVU of the MLP output {q.fvu:.3f}, L0 {q.l0:.1f}, dead {q.dead_fraction:.1%} on "
              f"{q.eval_tokens:,} held-out tokens{left_out}; next-token loss clean {q.loss_clean:.3f} / MLP output "
              f"replaced by the transcoder's {q.loss_spliced:.3f} (with its error term {q.loss_with_error:.3f}) / "
              f"zeroed {q.loss_zero:.3f} nats (loss recovered {q.loss_recovered:.1%}){trained}")
        return 0
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

    a = ablate_text(from_args(AblateJob, _named(args)), Path(args.db))
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

    s = steer_prompt(from_args(SteerJob, _named(args)), Path(args.db))
    out = s.to_json(_tokenizer(args.model))
    if args.json:
        _print_json(out)
    else:
        print(f"plain:   {out['prompt']}{out['plain']}\nsteered: {out['prompt']}{out['steered']}")
    return 0


def cmd_effects(args) -> int:
    from analysis.jobs.causal import EffectsJob, effects_of

    done = effects_of(from_args(EffectsJob, _named(args)), Path(args.db), _progress(args))
    for e in done:
        print(f"{str(e.unit):14s} Δloss {e.mean_loss_change:+.5f} nats/token (top records {e.mean_loss_change_top:+.5f})"
              f" over {e.n_positions} positions", file=sys.stderr)
    return 0


def cmd_attribute(args) -> int:
    from analysis.jobs.attribute import AttributeJob, attribute_prompt

    r = attribute_prompt(from_args(AttributeJob, args), Path(args.db))
    if args.json:
        _print_json(r.to_json())
        return 0
    for note in r.notes:
        print(f"note: {note}", file=sys.stderr)
    contrast = f" − {r.contrast_text!r}" if r.contrast_text is not None else ""
    print(f"target: logit of {r.target_text!r}{contrast} after token {r.target.position} "
          f"({r.tokens[r.target.position]!r}) = {r.attribution.value:+.3f}")

    def show(title: str, units) -> None:
        print(title)
        for u in units:
            print(f"  {u.value:+9.3f}  {str(u.unit):24s} at {u.position:3d} {r.tokens[u.position]!r}  (activation "
                  f"{u.activation:+.3g})")
    show("fires (activation / corpus max):", r.fires)
    if r.fires_raw:
        show("fires, raw activation (no harvest of their layer):", r.fires_raw)
    show("attribution, positive (linear estimates through the frozen model):", r.positive)
    show("attribution, negative:", r.negative)
    print(f"the listed units carry {r.share:.1%} of the total |attribution|")
    if r.checked:
        rho = "n/a" if r.rank_correlation is None else f"{r.rank_correlation:+.3f}"
        print(f"ablated for real (Spearman estimate vs real: {rho}):")
        for c in r.checked:
            print(f"  {str(c.unit.unit):24s} at {c.unit.position:3d}  estimate {c.estimate:+9.3f}  real {c.real:+9.3f}"
                  + ("" if c.agrees else "  (disagree)"))
    if r.graph is not None:
        print(f"graph: {len(r.graph.nodes)} units, {len(r.graph.edges)} edges (--json prints them)")
    return 0


def cmd_list(args) -> int:
    from analysis.jobs.lists import add_to_list, delete_list, remove_from_list
    from analysis.types import UnitId
    from cache.store import open_store

    db = Path(args.db)
    if args.list_command in ("add", "remove"):
        if args.layer is None or args.neuron is None:
            raise UserError("give --layer L and --neuron N")
        unit = UnitId(_named(args).source or MLP, args.layer, args.neuron)
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
