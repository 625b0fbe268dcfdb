"""The store and the viewer at 500k units: bytes per unit of each database, and what each page runs to draw, on a
524,288-neuron harvest against the 46,080-neuron demo harvest, in the same run.

    python -m bench.scale_store --db /tmp/scale/wide.duckdb --demo /tmp/scale/demo.duckdb [--repeat 5] [--work DIR]

Bytes per unit: the database file (harvest only, as built) over the units its finished neuron runs hold.

Synthetic rows: each database is copied once (``<name>.bench.duckdb`` in --work, default beside it; reused, and
only what is missing is added: the originals are only read), and every harvested unit the build did not explain
gets, through the store's own write methods, one explanation (words drawn from the tokenizer's vocabulary), one
scored simulation and one token-lookup baseline (random scores), and a random unit sentence vector
(``put_vectors``). Search and Scores times depend on how many rows there are, not on what they say.

Timed on the copies (read-only, warm: one call first, then the best of --repeat), each exactly the store calls its
page makes: the unit page's first visit of a unit (viewer/views/neuron.py: the picker's catalog and run, the
unit's record, its glance, its lists; median over a few seeded units) and its explanations tab (the unit's
explanations and baselines, and the units nearest its explanation by vector); the Search page's token search,
statistic search (a layer's units by max), explanation search by keyword and by meaning (with the count of
explanations without a vector the page shows first; the query's own embedding is timed apart); the Scores page.
Target: each within 1.5x of the demo's time.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
from pathlib import Path

import numpy as np

from analysis.types import MLP, Explanation, UnitId
from bench.causal import best_of

SYNTH = "synthetic-bench"
"""The explainer and simulator name of the synthetic rows."""
SCORING_SET = "top-and-random"
TOKEN = " Paris"
KEYWORDS = "river lake water"
MEANING = "rivers and lakes"
TARGET = 1.5


def harvested(s):
    """(model, its finished neuron runs, how many units they hold) of the database's first model."""
    model = s.catalog.models()[0]
    runs = s.runs.finished(model.model_id, source=MLP)
    return model, runs, len({l for r in runs for l in r.layers}) * model.d_mlp


def vocabulary(s, tokenizer_id: str, n: int = 3000) -> list[str]:
    """``n`` lower-case words of the tokenizer's vocabulary (seeded), the keyword query's words among them."""
    words = sorted({t.strip() for t in s.catalog.vocab(tokenizer_id).values()
                    if t.startswith(" ") and t.strip().isalpha() and t.strip().islower() and len(t.strip()) >= 4})
    return sorted(set(random.Random(0).sample(words, min(n, len(words)))) | set(KEYWORDS.split()))


def add_synthetic(path: Path) -> dict[str, int]:
    """Add the synthetic rows the copy lacks (per layer, idempotent); how many of each it holds."""
    from analysis.evaluate import ScoredSimulation
    from analysis.search import DIM, ENCODER
    from cache.store import open_store

    rng, vrng = random.Random(1), np.random.default_rng(1)
    with open_store(path) as s:
        model, runs, _n = harvested(s)
        words = vocabulary(s, model.tokenizer_id)

        def scored(text: str, who: str) -> ScoredSimulation:
            return ScoredSimulation(text, who, {}, SCORING_SET, [], [], [], None, rng.uniform(-0.2, 0.9), None, None,
                                    1.0)

        for run in runs:
            for layer in run.layers:
                todo = sorted(set(range(model.d_mlp)) - s.explanations.units_explained_by(run.run_id, MLP, layer, None))
                texts = [f"the main thing this neuron does is find {', '.join(rng.sample(words, 4))}" for _ in todo]
                units = [UnitId(MLP, layer, u) for u in todo]
                ids = s.explanations.put_many([(run.run_id, u, Explanation(t, SYNTH)) for u, t in zip(units, texts)])
                s.explanations.put_simulations([(i, scored(t, SYNTH)) for i, t in zip(ids, texts)])
                based = s.explanations.units_with_baseline(run.run_id, MLP, layer, "token-lookup", SCORING_SET)
                s.explanations.put_baselines([(run.run_id, UnitId(MLP, layer, u), scored("", "token-lookup"))
                                              for u in range(model.d_mlp) if u not in based])
        missing = [h.explanation_id for h in s.explanations.missing_vectors(ENCODER, model.model_id)]
        for i in range(0, len(missing), 32768):
            v = vrng.standard_normal((len(missing[i:i + 32768]), DIM), dtype=np.float32)
            s.explanations.put_vectors(ENCODER, missing[i:i + 32768], v / np.linalg.norm(v, axis=1, keepdims=True))
        return s.explanations.counts()


def synthetic_copy(db: Path, work: Path) -> tuple[Path, dict[str, int]]:
    copy = work / f"{db.stem}.bench.duckdb"
    if not copy.exists():
        shutil.copyfile(db, copy.with_suffix(".partial"))
        copy.with_suffix(".partial").rename(copy)
    return copy, add_synthetic(copy)


# ---- what the pages run ---------------------------------------------------------------------------------------

def unit_page(s, model, unit: UnitId):
    """viewer/views/neuron.py render()'s read: the picker (resources.pick_unit), the record, the lists, the glance."""
    s.catalog.models(), s.runs.sources(), s.catalog.dictionaries()
    run = s.runs.find(model.name, unit.layer, source=unit.source)
    rec = s.records.unit_record(run, unit)
    s.lists.names(), s.lists.containing(model.model_id, unit)
    s.glance(model.model_id, rec)
    return rec


def explanations_tab(s, model, rec) -> None:
    """The unit page's explanations tab: its explanations, baselines and similar units (neuron.similar_units)."""
    from analysis.search import ENCODER

    s.explanations.with_simulations(rec.run_id, rec.unit), s.explanations.baselines(rec.run_id, rec.unit)
    best = s.explanations.best(rec.run_id, rec.unit)
    texts = [e for e in s.explanations.of_unit(rec.run_id, rec.unit) if e.explainer != "n2g"]
    e = best[0] if best else texts[-1]
    vec = s.explanations.vector(ENCODER, e.explanation_id)
    assert s.explanations.similar(ENCODER, vec, model.model_id, 8, not_unit=rec.unit)


def token_search(s, model) -> None:
    """viewer/views/search.py token_search, rank by z (its default)."""
    runs = s.runs.finished(model.model_id, source=None)
    assert [row for hit in s.catalog.token_ids(model.tokenizer_id, TOKEN) for run in runs
            for row in s.records.units_for_token(run.run_id, hit.token_id, limit=15, rank="z")]


def stats_search(s, model, layer: int) -> None:
    """viewer/views/search.py stats_search: a layer's units by max (its first order)."""
    runs = s.runs.finished(model.model_id, source=None)
    run = next(r for r in runs if layer in r.layers and r.source == MLP)
    assert s.records.units_by(run.run_id, layer, "max", limit=25, source=MLP)


def keyword_search(s, model) -> None:
    from analysis.jobs.embed import search_explanations

    assert search_explanations(s, model.name, KEYWORDS, "keyword", limit=20)


def meaning_search(s, model) -> None:
    from analysis.jobs.embed import search_explanations
    from analysis.search import ENCODER

    assert not s.explanations.missing_vectors(ENCODER, model.model_id)
    assert search_explanations(s, model.name, MEANING, "meaning", limit=20)


def scores_page(s, model) -> None:
    """viewer/views/scores.py render()'s reads: the model, its record sets and sources, then the overview."""
    s.catalog.models()
    model_id = s.catalog.model(model.name).model_id
    assert SCORING_SET in s.scores.kinds(model_id)[0]
    assert s.scores.overview(model_id, SCORING_SET, MLP).n_units


def timings(path: Path, repeat: int, n_units: int) -> dict[str, float]:
    from cache.store import open_store

    with open_store(path, read_only=True) as s:
        model, runs, _n = harvested(s)
        layers = sorted({l for r in runs for l in r.layers})
        rng = random.Random(0)
        units = [UnitId(MLP, rng.choice(layers), rng.randrange(model.d_mlp)) for _ in range(n_units)]

        def timed(fn) -> float:
            fn()
            return best_of(fn, repeat)

        out = {"unit page (record, glance, lists)": statistics.median(
            timed(lambda u=u: unit_page(s, model, u)) for u in units)}
        recs = [unit_page(s, model, u) for u in units]
        out["unit page, explanations tab"] = statistics.median(
            timed(lambda r=r: explanations_tab(s, model, r)) for r in recs)
        out[f"token search ({TOKEN!r}, by z)"] = timed(lambda: token_search(s, model))
        out["statistic search (a layer by max)"] = timed(lambda: stats_search(s, model, layers[len(layers) // 2]))
        out["explanation search, keyword"] = timed(lambda: keyword_search(s, model))
        out["explanation search, meaning"] = timed(lambda: meaning_search(s, model))
        out["Scores page"] = timed(lambda: scores_page(s, model))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="the large database (a 524,288-neuron harvest)")
    ap.add_argument("--demo", required=True, help="the demo harvest (46,080 neurons)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--units", type=int, default=5, help="unit pages timed per database (median)")
    ap.add_argument("--work", default=None, help="folder of the copies with synthetic rows (default: beside each)")
    args = ap.parse_args()
    from analysis.search import embed
    from cache.store import open_store

    dbs = {"wide": Path(args.db).resolve(), "demo": Path(args.demo).resolve()}
    print("bytes per unit (the database file as built, over the units of its finished neuron runs):")
    copies, held = {}, {}
    for name, db in dbs.items():
        with open_store(db, read_only=True) as s:
            model, runs, n = harvested(s)
        size = db.stat().st_size
        print(f"  {name}: {model.name}, {model.n_layers} x {model.d_mlp:,} neurons in {len(runs)} run(s): "
              f"{size / 1e6:,.0f} MB / {n:,} units = {size / n:,.0f} B per unit")
        copies[name], held[name] = synthetic_copy(db, Path(args.work or db.parent))
    print("synthetic rows, written by this bench into the copies (not by a build): " + "; ".join(
        f"{name} {', '.join(f'{v:,} {k}' for k, v in held[name].items())}" for name in dbs))
    embed([MEANING])
    t_embed = best_of(lambda: embed([MEANING]), args.repeat)
    times = {name: timings(copies[name], args.repeat, args.units) for name in dbs}
    print(f"what the pages run (warm, best of {args.repeat}; the unit page: median over {args.units} seeded units):")
    print(f"  {'':42s} {'wide ms':>9s} {'demo ms':>9s} {'ratio':>7s}  target <= {TARGET}x")
    for what in times["wide"]:
        w, d = times["wide"][what], times["demo"][what]
        print(f"  {what:42s} {w * 1e3:9.1f} {d * 1e3:9.1f} {w / d:7.2f}  {'met' if w / d <= TARGET else 'missed'}")
    print(f"  (explanation search by meaning includes embedding the query: {t_embed * 1e3:.1f} ms of it)")


if __name__ == "__main__":
    main()
