"""The embedding scorer over every token-lookup (baseline) explanation of the demo, against its floor: the sentence
encoder's own time for the windows and explanations it must encode, measured in the same run.

    python -m bench.embed_score [--db data/demo.duckdb] [--layers all]

On a copy of the database without window vectors, scorer results and explanation vectors (so everything is
encoded): (1) ``score --scorer embedding`` of every layer as the build runs it (the layer's records read once and
given to the job, as the baselines stage does) and as a standalone job (reading them itself); (2) the floor:
``analysis.search.embed`` of the same window texts and explanation texts, batched as the job batches them.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from analysis.config import default_db


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--layers", default="all")
    args = ap.parse_args()
    import torch

    from analysis.jobs.reads import unit_records
    from analysis.jobs.score import ScoreJob, score
    from analysis.scorers.embedding import examples_of, window_text
    from analysis.search import embed
    from cache.store import open_store

    torch.set_num_threads(2)
    tmp = Path(tempfile.mkdtemp())
    db = tmp / "bench.duckdb"
    shutil.copy(args.db, db)
    with open_store(db) as s:
        s.con.execute("DELETE FROM window_vectors; DELETE FROM scorer_results; DELETE FROM explanation_vectors")
        model = s.catalog.models()[0]
    layers = range(model.n_layers) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    embed(["warm up"])
    t_read = t_job = 0.0
    windows, texts, n_scored = {}, [], 0
    for layer in layers:
        t0 = time.perf_counter()
        recs = unit_records(db, model.name, layer, list(range(model.d_mlp)))
        t_read += time.perf_counter() - t0
        t0 = time.perf_counter()
        s = score(ScoreJob(layer, "all", model.name, scorer="embedding"), db, records=recs)
        t_job += time.perf_counter() - t0
        n_scored += len(s.results)
        for rec in recs.values():
            windows.update({r.window_id: window_text(r) for r, _y in examples_of(rec)})
        with open_store(db, read_only=True) as st:
            texts += [e.text for rec in recs.values() for e in st.explanations.of_unit(rec.run_id, rec.unit)
                      if e.explainer != "n2g" and e.text.strip()]
    t0 = time.perf_counter()
    embed(sorted(windows.values(), key=len))
    embed(texts)
    floor = time.perf_counter() - t0
    print(f"embedding scorer, {n_scored:,} explanations of {len(list(layers))} layers ({len(windows):,} example windows, "
          f"{len(texts):,} explanation texts encoded):")
    print(f"  as the build runs it (records given): {t_job:.1f} s = {t_job / floor:.2f}x the encoder's own "
          f"{floor:.1f} s (target <= 1.3x)")
    print(f"  standalone (reading the records too, {t_read:.1f} s): {t_job + t_read:.1f} s = "
          f"{(t_job + t_read) / floor:.2f}x")
    shutil.rmtree(tmp)


if __name__ == "__main__":
    main()
