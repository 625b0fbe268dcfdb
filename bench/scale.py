"""A harvest and build at Llama-3.1-8B's neuron count, on this machine: the memory model against peak RSS, the
wide model's whole harvest under the budget it printed, layers equal to their harvest alone, a writer killed in
the write, and a build over one layer with the whole model's time extrapolated from it.

    python -m bench.scale [--wide /tmp/wide] [--work /tmp/scale-bench] [--steps shapes,wide,alone,kill,build]

Every harvest is ``python -m analysis harvest`` in its own process (peak RSS is the process's VmHWM, which the
harvest prints); numbers are read from what it prints. Steps:
  shapes  the plan's peak estimate vs the measured peak on three shapes (SmolLM2-135M all layers; the wide model's
          8 layers; 4 layers at --seq-len 128 --top-k 60), 8,192 tokens each;
  wide    the wide model (``bench/random_model.py --wide``: 32 x 16,384 = 524,288 neurons) over 20,480 tokens with
          default settings: it completes, and its peak stays under the budget it printed;
  alone   layers 0, 17 and 31 harvested alone equal those layers of the whole harvest (every table);
  kill    the writer SIGKILLed inside its first layer's write, three times: the database's size after each try;
  build   ``build`` over layer 31 (baselines for every unit; topics and N2G for 8 seeded units), then the plan of
          the whole model from those measured costs (extrapolated, said so).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

import duckdb

from analysis.harvest.memory import parse_bytes

TABLES = ("unit_stats", "records", "samples", "token_means")


def analysis(*args: str, env: dict | None = None) -> tuple[int, str, float]:
    """(exit code, stderr, seconds) of ``python -m analysis ARGS`` (or another module as args[0] '-m X')."""
    cmd = [sys.executable, *(args if args[0] == "-m" else ("-m", "analysis", *args))]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    return p.returncode, p.stderr, time.perf_counter() - t0


def gb(text: str) -> float:
    return parse_bytes(text.replace(" ", "")) / 1e9


def harvest(db: Path, model: str, *extra: str) -> dict:
    """Harvest into a fresh ``db``; the plan's estimate and budget and the measured peak (GB), and the timings."""
    for p in (db, Path(str(db) + ".wal")):
        p.unlink(missing_ok=True)
    code, err, seconds = analysis("harvest", "--db", str(db), "--model", model, "--corpus", "enwiki-sample", *extra)
    if code != 0:
        sys.exit(f"harvest failed ({code}):\n{err[-3000:]}")
    plan = re.search(r"plan: ([\d,]+) units in (\d+) pass.*?peak memory ≈ ([\d.]+ [kMGT]?B) of a ([\d.]+ [kMGT]?B)", err)
    done = re.search(r"harvest (\d+) s = (\d+) tok/s in \d+ pass\w*, write (\d+) s; peak memory ([\d.]+ [kMGT]?B)",
                     err)
    return {"units": int(plan.group(1).replace(",", "")), "passes": int(plan.group(2)),
            "estimate": gb(plan.group(3)), "budget": gb(plan.group(4)), "peak": gb(done.group(4)),
            "harvest_s": int(done.group(1)), "tok_s": int(done.group(2)), "write_s": int(done.group(3)),
            "seconds": seconds, "db_bytes": db.stat().st_size}


def tables(db: Path, layer: int) -> dict:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return {t: con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} WHERE layer = ? ORDER BY ALL", [layer]).fetchall()
                for t in TABLES}
    finally:
        con.close()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--wide", default="/tmp/wide", help="the wide model's folder (made if missing)")
    ap.add_argument("--work", default="/tmp/scale-bench")
    ap.add_argument("--steps", default="shapes,wide,alone,kill,build")
    ap.add_argument("--seed", type=int, default=39)
    args = ap.parse_args()
    steps, work, wide = args.steps.split(","), Path(args.work), args.wide
    work.mkdir(parents=True, exist_ok=True)
    if not Path(wide, "config.json").exists():
        subprocess.run([sys.executable, "-m", "bench.random_model", "--like", "data/models/smollm2-135m", "--out", wide,
                        "--wide"], check=True)
    whole = work / "wide.duckdb"
    if "shapes" in steps:
        print("| shape | units | passes | estimate (GB) | peak RSS (GB) | peak / estimate |\n|---|---|---|---|---|---|")
        for name, model, extra in (("SmolLM2-135M, all 30 layers", "smollm2-135m", ("--layers", "all")),
                                   ("wide, 8 layers", wide, ("--layers", "0-7")),
                                   ("wide, 4 layers, seq-len 128, top-k 60", wide,
                                    ("--layers", "0-3", "--seq-len", "128", "--top-k", "60"))):
            r = harvest(work / "shape.duckdb", model, "--max-tokens", "8192", *extra)
            print(f"| {name} | {r['units']:,} | {r['passes']} | {r['estimate']:.2f} | {r['peak']:.2f} | "
                  f"{r['peak'] / r['estimate']:.2f} |", flush=True)
    if "wide" in steps:
        r = harvest(whole, wide, "--layers", "all", "--max-tokens", "20480")
        print(f"\nwide model, 20,480 tokens, default settings: {r['units']:,} units in {r['passes']} pass(es); budget "
              f"{r['budget']:.1f} GB, estimate {r['estimate']:.1f} GB, peak RSS {r['peak']:.1f} GB "
              f"({'under' if r['peak'] <= r['budget'] else 'OVER'} the budget); harvest {r['harvest_s']} s "
              f"({r['tok_s']} tok/s), write {r['write_s']} s, whole command {r['seconds']:.0f} s; database "
              f"{r['db_bytes'] / 1e9:.2f} GB = {r['db_bytes'] / r['units']:,.0f} bytes per unit", flush=True)
    if "alone" in steps:
        for layer in (0, 17, 31):
            r = harvest(work / "alone.duckdb", wide, "--layers", str(layer), "--max-tokens", "20480")
            same = tables(work / "alone.duckdb", layer) == tables(whole, layer)
            print(f"layer {layer} alone ({r['seconds']:.0f} s): every table {'equals' if same else 'DIFFERS FROM'} "
                  "the whole harvest's", flush=True)
    if "kill" in steps:
        db = work / "killed.duckdb"
        for p in (db, Path(str(db) + ".wal")):
            p.unlink(missing_ok=True)
        sizes = []
        for _ in range(3):
            code, _err, _s = analysis("-m", "bench.kill_in_write", "harvest", "--db", str(db), "--model", wide,
                                      "--corpus", "enwiki-sample", "--layers", "0-3", "--max-tokens", "8192",
                                      "--checkpoint-seconds", "0", env={"KILL_AT_WRITE": "1"})
            sizes.append(sum(p.stat().st_size for p in (db, Path(str(db) + ".wal")) if p.exists()))
        code, err, _s = analysis("harvest", "--db", str(db), "--model", wide, "--corpus", "enwiki-sample", "--layers",
                                 "0-3", "--max-tokens", "8192", "--checkpoint-seconds", "0")
        resumed = "resumed from its checkpoint" in err
        print(f"\nkilled in the first layer's write 3 times (4 x 16,384 units): database + log after each try "
              f"{', '.join(f'{s / 1e6:.0f} MB' for s in sizes)}; the rerun {'resumed the whole pass' if resumed else 'HARVESTED AGAIN'}"
              f" and wrote {db.stat().st_size / 1e6:.0f} MB", flush=True)
    if "build" in steps:
        sample = sorted(random.Random(args.seed).sample(range(16_384), 8))
        common = ("--db", str(whole), "--model", wide, "--corpus", "enwiki-sample", "--max-tokens", "20480",
                  "--lenses", "harvest,baselines,topics,n2g")
        code, err, seconds = analysis("build", *common, "--layers", "31", "--expensive-neurons",
                                      ",".join(map(str, sample)), "--quiet")
        if code != 0:
            sys.exit(f"build failed ({code}):\n{err[-3000:]}")
        print(f"\nbuild of layer 31 (baselines for 16,384 units; topics and n2g for units {sample}, seed {args.seed}):"
              f" {seconds:.0f} s", flush=True)
        code, err, _s = analysis("build", *common, "--layers", "all", "--plan-only")
        print("the whole model's plan from those measured costs (extrapolated per unit):")
        print("\n".join(line for line in err.splitlines() if line.startswith("  ")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
