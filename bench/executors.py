"""The Ray executor's overhead: the same work on the local executor and on a local Ray cluster, in one run.

    python -m bench.executors [--db data/demo.duckdb] [--layer 15] [--tokens 16384] [--neurons 0-31] [--cpus 2]
                                [--harvest-layers 14,15] [--work harvest,baselines,n2g]

Needs Ray (``pip install -r requirements-ray.txt``). Work, each timed on both executors (one executor for all
three, as a build holds one; the Ray cluster's start is timed apart):
  1. harvest: ``--harvest-layers`` over ``--tokens`` seeded tokens of the embedded corpus into a new database (Ray
     runs a pass of layers per worker: at least as many passes as workers, each with its share of the memory);
  2. baselines: token-lookup explanation + baseline score of every neuron of the layer, on a copy of ``--db``
     (force: recomputed even where the copy has them);
  3. n2g: Neuron2Graph graphs of ``--neurons`` of the layer, on the same copy (force).
Local runs in this process with torch's default threads (all cores); Ray runs ``--cpus`` one-thread workers, each
loading the model once (inside its first task: counted in the first stage that needs it). Prints a markdown
table: seconds per executor and the ratio ray / local. ``--db`` itself is never written.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

from analysis.config import default_db
from analysis.executor import ExecutorConfig, make_executor
from analysis.jobs.explain import ExplainJob, explain
from analysis.jobs.harvest import HarvestJob, harvest
from analysis.jobs.n2g import N2GJob, n2g
from analysis.jobs.score import ScoreJob, score
from analysis.progress import Progress

QUIET = Progress(enabled=False)


def stages(db: Path, fresh: Path, args) -> dict:
    layer = args.layer
    return {
        "harvest": lambda ex: harvest(HarvestJob(layers=args.harvest_layers, max_tokens=args.tokens), fresh, QUIET, ex),
        "baselines": lambda ex: (explain(ExplainJob(layer=layer, neurons="all", explainer="token-lookup", force=True),
                                         db, QUIET, ex),
                                 score(ScoreJob(layer=layer, neurons="all", simulator="token-lookup", force=True),
                                       db, QUIET, ex)),
        "n2g": lambda ex: n2g(N2GJob(layer=layer, neurons=args.neurons, force=True), db, QUIET, executor=ex),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--neurons", default="0-31")
    ap.add_argument("--cpus", type=int, default=2)
    ap.add_argument("--harvest-layers", default="14,15")
    ap.add_argument("--work", default="harvest,baselines,n2g")
    args = ap.parse_args()
    seconds: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("local", "ray"):
            db, fresh = Path(tmp) / f"{kind}.duckdb", Path(tmp) / f"{kind}-harvest.duckdb"
            shutil.copy(args.db, db)
            t0 = time.perf_counter()
            ex = make_executor(ExecutorConfig(kind, cpus=args.cpus if kind == "ray" else None))
            seconds.setdefault("executor start", {})[kind] = time.perf_counter() - t0
            try:
                for name, run in stages(db, fresh, args).items():
                    if name not in args.work.split(","):
                        continue
                    t0 = time.perf_counter()
                    run(ex)
                    seconds.setdefault(name, {})[kind] = time.perf_counter() - t0
                    print(f"{kind} {name}: {seconds[name][kind]:.1f} s", file=sys.stderr)
            finally:
                ex.close()
    print(f"\nlayer {args.layer}; harvest {args.tokens:,} tokens of layers {args.harvest_layers}; "
          f"n2g neurons {args.neurons}; "
          f"ray: {args.cpus} one-thread workers\n")
    print("| work | local (s) | ray (s) | ray / local |\n|---|---|---|---|")
    for name, by in seconds.items():
        ratio = by["ray"] / by["local"] if by["local"] > 0.05 else float("nan")
        print(f"| {name} | {by['local']:.1f} | {by['ray']:.1f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
