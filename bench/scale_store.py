"""The store and the viewer at 500k units: bytes per unit of each database, and what each page runs to draw, on a
524,288-neuron harvest against the 46,080-neuron demo harvest, in the same run.

    python -m bench.scale_store --db /tmp/scale/wide.duckdb --demo /tmp/scale/demo.duckdb [--repeat 5] [--work DIR]

Bytes per unit: the database file (harvest only, as built) over the units its finished neuron runs hold.

Synthetic rows: each database is copied once (``<name>.bench.duckdb`` in --work, default beside it; migrated to
this code's schema; reused, only what is missing is added; the originals are only copied), and every harvested
unit the build did not explain gets, through the store's own write methods, one explanation (words drawn from
the tokenizer's vocabulary), one scored simulation and one token-lookup baseline (random scores), and a random
unit sentence vector (``put_vectors``). Search and Scores times depend on how many rows there are, not on what
they say.

Timed on the copies (read-only, warm: one call first, then the best of --repeat, the two databases taking
turns), each the store calls its page makes: the unit page's first visit of a unit (viewer/views/neuron.py: the
picker's catalog and run, the unit's record, its glance, its lists) and its explanations tab (the unit's
explanations and baselines, and the units nearest its explanation by vector, from the kept vector index), per unit over a few seeded units;
the Search page's token search, statistic search (a layer's units by max), explanation search by keyword (with
the index the viewer keeps per file version; building it is timed apart) and by meaning (with the count of
explanations without a vector the page shows first and the vector index, both kept per file version and timed
apart; the query's embedding, the same on both, is timed apart);
the Scores page as served (its script under Streamlit's AppTest, the overview kept per file version as the
viewer keeps it) and its overview summed up in SQL (what a first visit after a change adds). Target: each page
within 1.5x of the demo's time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from analysis.types import MLP, Explanation, UnitId
from bench.causal import best_of

SYNTH = "synthetic-bench"
"""The explainer and simulator name of the synthetic rows."""
SCORING_SET = "top-and-random"
TOKEN = " river"  # in both token tables (the 20k-token wide harvest tracks fewer tokens: no " Paris")
KEYWORDS = "river lake water"
MEANING = "rivers and lakes"
TARGET = 1.5
REPO = Path(__file__).resolve().parents[1]


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


def synthetic_copy(db: Path, work: Path) -> tuple[Path, dict[str, int], dict[str, int]]:
    """The copy of ``db`` (made once, migrated to this code's schema) with the synthetic rows: (its path, how many
    explanation rows the build wrote, how many the copy holds)."""
    from cache.store import migrate_file, open_store

    copy = work / f"{db.stem}.bench.duckdb"
    built = copy.with_suffix(".built.json")
    if not copy.exists():
        partial = copy.with_suffix(".partial")
        shutil.copyfile(db, partial)
        migrate_file(partial)
        with open_store(partial, read_only=True) as s:
            built.write_text(json.dumps(s.explanations.counts()))
        partial.rename(copy)
    migrate_file(copy)
    return copy, json.loads(built.read_text()), add_synthetic(copy)


# ---- what the pages run ---------------------------------------------------------------------------------------

def unit_page(s, model, unit: UnitId):
    """viewer/views/neuron.py render()'s read: the picker (resources.pick_unit), the record, the lists, the glance."""
    s.catalog.models(), s.runs.sources(), s.catalog.dictionaries()
    run = s.runs.find(model.name, unit.layer, source=unit.source)
    rec = s.records.unit_record(run, unit)
    s.lists.names(), s.lists.containing(model.model_id, unit)
    s.glance(model.model_id, rec)
    return rec


def explanations_tab(s, model, rec, vectors) -> None:
    """The unit page's explanations tab: its explanations, baselines and similar units (neuron.similar_units, with
    the vector index the viewer keeps per file version)."""
    from analysis.jobs.embed import nearest_explanations

    s.explanations.with_simulations(rec.run_id, rec.unit), s.explanations.baselines(rec.run_id, rec.unit)
    best = s.explanations.best(rec.run_id, rec.unit)
    texts = [e for e in s.explanations.of_unit(rec.run_id, rec.unit) if e.explainer != "n2g"]
    e = best[0] if best else texts[-1]
    assert nearest_explanations(s, vectors, vectors[1].row(vectors[2][e.explanation_id]), 8, not_unit=rec.unit)


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


def keyword_search(s, model, keywords) -> None:
    """viewer/views/search.py explanation_search by keyword, with the index the viewer keeps per file version."""
    from analysis.jobs.embed import search_explanations

    assert search_explanations(s, model.name, KEYWORDS, "keyword", limit=20, keywords=keywords)


def meaning_search(s, model, vector: list[float], vectors) -> None:
    """viewer/views/search.py explanation_search by meaning: search_explanations' store call with the vector index
    the viewer keeps (the count of explanations without a vector, kept too, and the query's embedding, the same
    for both databases, are timed apart)."""
    from analysis.jobs.embed import nearest_explanations

    assert nearest_explanations(s, vectors, vector, 20)


def missing_count(s, model) -> None:
    """The Search page's count of explanations without a vector (kept per file version)."""
    from analysis.search import ENCODER

    assert not s.explanations.missing_vectors(ENCODER, model.model_id)


def scores_page(s, model) -> None:
    """viewer/views/scores.py render()'s reads: the model, its record sets and sources, then the overview."""
    s.catalog.models()
    model_id = s.catalog.model(model.name).model_id
    assert SCORING_SET in s.scores.kinds(model_id)[0]
    assert s.scores.overview(model_id, SCORING_SET, MLP).n_units


PAGES = [  # (what, the call on (store, context), whether a page draw: the 1.5x target)
    ("unit page (record, glance, lists)", lambda s, c: [unit_page(s, c.model, u) for u in c.units], True),
    ("unit page, explanations tab", lambda s, c: [explanations_tab(s, c.model, r, c.vectors) for r in c.recs], True),
    (f"token search ({TOKEN!r}, by z)", lambda s, c: token_search(s, c.model), True),
    ("statistic search (a layer by max)", lambda s, c: stats_search(s, c.model, c.layers[len(c.layers) // 2]), True),
    ("explanation search, keyword", lambda s, c: keyword_search(s, c.model, c.keywords), True),
    ("explanation search, meaning", lambda s, c: meaning_search(s, c.model, c.vector, c.vectors), True),
    ("Scores page as served (AppTest; overview kept)", lambda s, c: served("scores", c.path), True),
    ("keyword index (once per file version)", lambda s, c: keyword_index(s, c.model.model_id), False),
    ("vector index (once per file version)", lambda s, c: vector_index(s, c.model.model_id), False),
    ("explanations without a vector (once per file version)", lambda s, c: missing_count(s, c.model), False),
    ("Scores overview in SQL (once per file version)", lambda s, c: scores_page(s, c.model), False),
]


def keyword_index(s, model_id: str):
    from analysis.jobs.embed import keyword_index as build

    return build(s, model_id)


def vector_index(s, model_id: str):
    from analysis.jobs.embed import vector_index as build

    return build(s, model_id)


def served(page: str, db: Path) -> None:
    """The page's script run by Streamlit's AppTest on ``db`` (server-side time; what the viewer keeps per file
    version, it has kept since the warm-up run)."""
    from streamlit.testing.v1 import AppTest

    os.environ["NEURON_VIEWER_DB"] = str(db)
    at = AppTest.from_file(str(REPO / "viewer" / "views" / f"{page}.py"), default_timeout=120).run()
    assert not at.exception, at.exception


def context(s, n_units: int) -> SimpleNamespace:
    """The database's path, model, layers, seeded units (their records read once) and keyword index."""
    model, runs, _n = harvested(s)
    layers = sorted({l for r in runs for l in r.layers})
    rng = random.Random(0)
    units = [UnitId(MLP, rng.choice(layers), rng.randrange(model.d_mlp)) for _ in range(n_units)]
    from analysis.search import embed

    return SimpleNamespace(path=s.path, model=model, layers=layers, units=units, vector=embed([MEANING])[0].tolist(),
                           recs=[unit_page(s, model, u) for u in units],
                           keywords=keyword_index(s, model.model_id), vectors=vector_index(s, model.model_id))


def timings(copies: dict[str, Path], repeat: int, n_units: int) -> dict[str, dict[str, float]]:
    """Per page, per database: the best of ``repeat`` after one warm-up call, the databases taking turns (a load
    that drifts meanwhile reaches both). A unit page's time is per unit (the mean over the seeded units)."""
    from cache.store import open_store

    with open_store(copies["wide"], read_only=True) as w, open_store(copies["demo"], read_only=True) as d:
        stores = {"wide": w, "demo": d}
        ctx = {name: context(s, n_units) for name, s in stores.items()}
        out: dict[str, dict[str, float]] = {}
        for what, fn, _target in PAGES:
            per = n_units if what.startswith("unit page") else 1
            best = {}
            for name, s in stores.items():
                fn(s, ctx[name])
            for _ in range(repeat):
                for name, s in stores.items():
                    best[name] = min(best.get(name, float("inf")), best_of(lambda: fn(s, ctx[name]), 1) / per)
            out[what] = best
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", required=True, help="the large database (a 524,288-neuron harvest)")
    ap.add_argument("--demo", required=True, help="the demo harvest (46,080 neurons)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--units", type=int, default=5, help="unit pages timed per database (the mean per unit)")
    ap.add_argument("--work", default=None, help="folder of the copies with synthetic rows (default: beside each)")
    args = ap.parse_args()
    from analysis.search import embed
    from cache.store import open_store

    dbs = {"wide": Path(args.db).resolve(), "demo": Path(args.demo).resolve()}
    print("bytes per unit: the database file over the units of its finished neuron runs")
    copies = {}
    for name, db in dbs.items():
        copies[name], built, held = synthetic_copy(db, Path(args.work or db.parent))
        with open_store(copies[name], read_only=True) as s:
            model, runs, n = harvested(s)
        size, size_copy = db.stat().st_size, copies[name].stat().st_size
        print(f"  {name}: {model.name}, {len({l for r in runs for l in r.layers})} x {model.d_mlp:,} neurons in "
              f"{len(runs)} run(s): {size / 1e6:,.0f} MB / {n:,} = {size / n:,.0f} B per unit as built; "
              f"{size_copy / n:,.0f} B with the synthetic rows")
        print(f"    synthetic rows (this bench's, not a build's) in {copies[name].name}: " + ", ".join(
            f"{held[k] - built[k]:,} {k}" for k in held) + f" (the build wrote {sum(built.values()):,} such rows)")
    embed([MEANING])
    t_embed = best_of(lambda: embed([MEANING]), args.repeat)
    times = timings(copies, args.repeat, args.units)
    print(f"what the pages run (warm, best of {args.repeat}, the databases taking turns; a unit page: the mean over "
          f"{args.units} seeded units):")
    print(f"  {'':48s} {'wide ms':>9s} {'demo ms':>9s} {'ratio':>7s}  target <= {TARGET}x")
    for what, _fn, target in PAGES:
        w, d = times[what]["wide"], times[what]["demo"]
        verdict = ("met" if w / d <= TARGET else "missed") if target else "(no target: not a page's draw)"
        print(f"  {what:48s} {w * 1e3:9.1f} {d * 1e3:9.1f} {w / d:7.2f}  {verdict}")
    print(f"  (a search by meaning also embeds the query, on either database: {t_embed * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()
