"""Do the offline scorers separate a unit's own explanation from another unit's? On seeded samples of the demo's
units, fixed before looking (neurons of every layer and features of the demo SAE, reported apart):

- own vs other: the share of units whose own explanation scores above another sampled unit's explanation of the
  same kind on the unit's own examples (ties half), with a 95 % interval over units (bootstrap);
- the embedding score's Spearman correlation with the unit's token-lookup baseline simulation score;
- the same for the output score, with the output-side explanations (``output-weights``) against shuffled ones.

    python -m bench.score_quality [--db data/demo.duckdb] [--seed 401] [--n 220] [--scorers embedding,output]

The explanations are the token-lookup explainer's (the build's baseline explanation for every unit; features get
theirs here if missing). Seed 400 was the sample looked at while the scorers were written; 401 is the fresh one.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np

from analysis.config import default_db
from analysis.types import MLP, UnitId


def _sample(store, model, source: str, layers: list[int], width: int, n: int, seed: int) -> list[UnitId]:
    """``n`` live units (max > 0) of ``source`` at ``layers``, drawn with ``seed``."""
    rng = random.Random(seed)
    live = []
    for layer in layers:
        run = store.runs.find(model.name, layer, source=source)
        maxima = store.records.layer_maxima(run.run_id, source, layer, width)
        live += [UnitId(source, layer, int(u)) for u in np.flatnonzero(maxima > 0)]
    return sorted(rng.sample(live, min(n, len(live))), key=lambda u: (u.layer, u.index))


def _records(db, model, units: list[UnitId]) -> dict:
    from analysis.jobs.reads import unit_records

    out = {}
    for layer in sorted({u.layer for u in units}):
        idx = [u.index for u in units if u.layer == layer]
        out.update({UnitId(units[0].source, layer, i): r
                    for i, r in unit_records(db, model.name, layer, idx, units[0].source).items()})
    return out


def _explanations(db, model, recs: dict, explainer: str, examples: str = "top") -> dict:
    """unit -> (explanation id, text) by ``explainer``, made where missing (with the token-lookup baseline score
    for token-lookup ones)."""
    from analysis.jobs.explain import ExplainJob, explain
    from cache.store import open_store

    from analysis.jobs.explain import stored_name

    def read():
        with open_store(db, read_only=True) as s:
            return {u: next(((e.explanation_id, e.text) for e in s.explanations.of_unit(r.run_id, u)
                             if e.explainer == stored_name(explainer, examples)), None) for u, r in recs.items()}

    got = read()
    missing = [u for u, e in got.items() if e is None]
    for layer in sorted({u.layer for u in missing}):
        idx = ",".join(str(u.index) for u in missing if u.layer == layer)
        explain(ExplainJob(layer, idx, model.name, missing[0].source, explainer=explainer, examples=examples), db)
    if explainer == "token-lookup" and examples == "top":  # the baseline score (resumable: units that have it are skipped)
        from analysis.jobs.score import ScoreJob, score

        units = list(recs)
        for layer in sorted({u.layer for u in units}):
            score(ScoreJob(layer, ",".join(str(u.index) for u in units if u.layer == layer), model.name,
                           units[0].source), db)
    got = read() if missing else got
    return {u: e for u, e in got.items() if e is not None}


def _share(own: np.ndarray, other: np.ndarray, seed: int) -> tuple[float, float, float]:
    """The share of own > other (ties half), with its 95 % bootstrap interval over units."""
    from analysis.scorers.metrics import interval

    wins = (own > other) + 0.5 * (own == other)
    rng = np.random.default_rng(seed)
    boots = wins[rng.integers(0, len(wins), (1000, len(wins)))].mean(1)
    return float(wins.mean()), *interval(boots)


def embedding_quality(db, model, recs: dict, exps: dict, seed: int) -> dict:
    import scipy.stats

    from analysis.jobs.judge import explanation_vectors, window_vectors
    from analysis.scorers.embedding import score_embedding
    from cache.store import open_store

    units = sorted(exps, key=lambda u: (u.layer, u.index))
    windows = {}
    for layer in sorted({u.layer for u in units}):
        windows.update(window_vectors(db, [recs[u] for u in units if u.layer == layer]))
    vecs = explanation_vectors(db, [(u, *exps[u]) for u in units])
    partner = _partners(units, seed)
    own, other, kept = [], [], []
    for u, v in zip(units, partner):
        a = score_embedding(exps[u][1], vecs[exps[u][0]], recs[u], windows)
        b = score_embedding(exps[v][1], vecs[exps[v][0]], recs[u], windows)
        if a.score is not None and b.score is not None:
            own.append(a.score), other.append(b.score), kept.append(u)
    own, other = np.array(own), np.array(other)
    with open_store(db, read_only=True) as s:
        base = {}
        for u in kept:
            b = [x.score for x in s.explanations.baselines(recs[u].run_id, u)
                 if x.predictor == "token-lookup" and x.scoring_set == "top-and-random" and x.score is not None]
            if b:
                base[u] = b[0]
    paired = [(o, base[u]) for u, o in zip(kept, own) if u in base]
    rho = scipy.stats.spearmanr(*zip(*paired)).statistic if len(paired) > 2 else float("nan")
    return {"n": len(kept), "skipped": len(units) - len(kept), "share": _share(own, other, seed),
            "median_own": float(np.median(own)), "median_other": float(np.median(other)),
            "spearman_baseline": (float(rho), len(paired))}


def _partners(units: list, seed: int) -> list:
    """A derangement of ``units`` (nobody is their own partner), drawn with ``seed``."""
    rng = random.Random(seed)
    partner = units[:]
    while any(a == b for a, b in zip(units, partner)):
        rng.shuffle(partner)
    return partner


def output_quality(db, model, recs: dict, exps: dict, seed: int) -> dict:
    """Each unit's output-weights explanation against another sampled unit's, by the output score on the unit."""
    from analysis.jobs.score import ScoreJob
    from analysis.models import load_model
    from analysis.scorers.output import score_output

    units = sorted(exps, key=lambda u: (u.layer, u.index))
    partner = dict(zip(units, _partners(units, seed)))
    subject = load_model(model.name)
    own, other, kept = {}, {}, []
    for layer in sorted({u.layer for u in units}):
        here = [u for u in units if u.layer == layer]
        items = [(recs[u], exps[u][1]) for u in here] + [(recs[u], exps[partner[u]][1]) for u in here]
        out = score_output(ScoreJob(layer, "0", model.name, here[0].source), db, items, subject=subject)
        for u, a, b in zip(here, out[:len(here)], out[len(here):]):
            if a.score is not None and b.score is not None:
                own[u], other[u] = a.score, b.score
                kept.append(u)
    o, t = np.array([own[u] for u in kept]), np.array([other[u] for u in kept])
    return {"n": len(kept), "skipped": len(units) - len(kept), "share": _share(o, t, seed),
            "median_own": float(np.median(o)), "median_other": float(np.median(t))}


def examples_quality(db, model, recs: dict, seed: int) -> dict:
    """Token-lookup explanations from the top records against from quantiles, each unit's two by its embedding
    score on its own examples: the share where quantiles score higher, and the medians."""
    from analysis.jobs.judge import explanation_vectors, window_vectors
    from analysis.scorers.embedding import score_embedding

    top = _explanations(db, model, recs, "token-lookup")
    quant = _explanations(db, model, recs, "token-lookup", "quantiles")
    units = sorted(set(top) & set(quant), key=lambda u: (u.layer, u.index))
    windows = {}
    for layer in sorted({u.layer for u in units}):
        windows.update(window_vectors(db, [recs[u] for u in units if u.layer == layer]))
    vecs = explanation_vectors(db, [(u, *top[u]) for u in units] + [(u, *quant[u]) for u in units])
    a, b = [], []
    for u in units:
        x = score_embedding(top[u][1], vecs[top[u][0]], recs[u], windows)
        y = score_embedding(quant[u][1], vecs[quant[u][0]], recs[u], windows)
        if x.score is not None and y.score is not None:
            a.append(x.score), b.append(y.score)
    a, b = np.array(a), np.array(b)
    return {"n": len(a), "share": _share(b, a, seed), "median_top": float(np.median(a)),
            "median_quantiles": float(np.median(b))}


def judge_quality(recs: dict, exps: dict, seed: int, scorer: str, n: int) -> dict:
    """Detection or fuzzing with the embedded model as the judge (tests/openai_server.py answering P(yes) per
    excerpt): own explanation against another sampled unit's, on the first ``n`` units."""
    from analysis.api import ApiClient, ApiConfig
    from analysis.models import load_model
    from analysis.scorers.detection import JudgeScorer
    from tests.openai_server import serve

    units = sorted(exps, key=lambda u: (u.layer, u.index))[:n]
    partner = dict(zip(units, _partners(units, seed)))
    own, other = [], []
    with serve(load_model("smollm2-135m")) as url:
        judge = JudgeScorer(scorer, ApiClient(ApiConfig(base_url=url, model="smollm2", reply_cache=False)))
        for u in units:
            a, b = judge.score(exps[u][1], recs[u]), judge.score(exps[partner[u]][1], recs[u])
            if a.metrics.get("auroc") and b.metrics.get("auroc"):
                own.append(a.metrics["auroc"]["value"]), other.append(b.metrics["auroc"]["value"])
    o, t = np.array(own), np.array(other)
    return {"n": len(o), "share": _share(o, t, seed), "median_own": float(np.median(o)),
            "median_other": float(np.median(t))}


def main() -> None:  # noqa: C901
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--seed", type=int, default=401)
    ap.add_argument("--n", type=int, default=220)
    ap.add_argument("--scorers", default="embedding", help="embedding, output, detection, fuzz, examples (top vs quantiles; comma-separated)")
    ap.add_argument("--judge-n", type=int, default=40, help="units for detection / fuzz (the embedded model judges)")
    args = ap.parse_args()
    from cache.store import open_store

    with open_store(args.db, read_only=True) as s:
        model = s.catalog.models()[0]
        sae = next((d for d in s.catalog.dictionaries(model.model_id) if d.kind == "sae"), None)
        kinds = {"neurons": _sample(s, model, MLP, list(range(model.n_layers)), model.d_mlp, args.n, args.seed)}
        if sae is not None:
            kinds["SAE features"] = _sample(s, model, sae.source, [sae.layer], sae.d_sae, args.n, args.seed)
    for kind, units in kinds.items():
        t0 = time.perf_counter()
        recs = _records(args.db, model, units)
        exps = _explanations(args.db, model, recs, "token-lookup")
        if "embedding" in args.scorers:
            q = embedding_quality(args.db, model, recs, exps, args.seed)
            share, lo, hi = q["share"]
            rho, n_rho = q["spearman_baseline"]
            print(f"seed {args.seed} {kind}: embedding, own explanation above another unit's: {share:.1%} "
                  f"[{lo:.1%}, {hi:.1%}] of {q['n']} units ({q['skipped']} without both classes); median AUROC own "
                  f"{q['median_own']:.3f} vs other {q['median_other']:.3f}; Spearman with the token-lookup "
                  f"baseline's simulation score {rho:+.2f} (n={n_rho})  [{time.perf_counter() - t0:.0f} s]")
        if "examples" in args.scorers:
            q = examples_quality(args.db, model, recs, args.seed)
            share, lo, hi = q["share"]
            print(f"seed {args.seed} {kind}: token-lookup from quantiles scores above from the top (embedding): "
                  f"{share:.1%} [{lo:.1%}, {hi:.1%}] of {q['n']} units; median AUROC top {q['median_top']:.3f}, "
                  f"quantiles {q['median_quantiles']:.3f}")
        for scorer in ("detection", "fuzz"):
            if scorer in args.scorers:
                t0 = time.perf_counter()
                q = judge_quality(recs, exps, args.seed, scorer, args.judge_n)
                share, lo, hi = q["share"]
                print(f"seed {args.seed} {kind}: {scorer} judged by the embedded SmolLM2-135M, own explanation above "
                      f"another unit's (AUROC): {share:.1%} [{lo:.1%}, {hi:.1%}] of {q['n']} units; median AUROC own "
                      f"{q['median_own']:.3f} vs other {q['median_other']:.3f}  [{time.perf_counter() - t0:.0f} s]")
        if "output" in args.scorers:
            t0 = time.perf_counter()
            q = output_quality(args.db, model, recs, _explanations(args.db, model, recs, "output-weights"), args.seed)
            share, lo, hi = q["share"]
            print(f"seed {args.seed} {kind}: output score, own output-weights explanation above another unit's: "
                  f"{share:.1%} [{lo:.1%}, {hi:.1%}] of {q['n']} units ({q['skipped']} not scored); median AUROC "
                  f"own {q['median_own']:.3f} vs other {q['median_other']:.3f}  [{time.perf_counter() - t0:.0f} s]")


if __name__ == "__main__":
    main()
