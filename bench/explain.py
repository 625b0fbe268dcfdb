"""Explanation benchmark on the demo cache: local all-at-once simulation throughput and one neuron's full
explain + score cost with the local backends.

    python -m bench.explain [--db data/demo.duckdb] [--layer 15] [--neurons 4]

Baseline measured in the same run: simulating one record the per-token way (one forward pass per activation
slot, the prompt cut after each TAB), against the all-at-once pass (one forward for the whole record).
"""

from __future__ import annotations

import argparse
import time

from analysis.config import default_db
from analysis.types import MLP, UnitId


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--neurons", type=int, default=4)
    args = ap.parse_args()
    import torch

    from analysis.evaluate import score_simulation
    from analysis.splits import explainer_train, scoring_records
    from analysis.explain import LocalExplainer, TokenLookupExplainer
    from analysis.models import load_model
    from analysis.simulate import LocalAllAtOnceSimulator
    from cache.store import open_store

    torch.set_num_threads(2)
    with open_store(args.db, read_only=True) as s:
        model = s.catalog.models()[0]
        run = s.runs.find(model.name, args.layer)
        recs = [s.records.unit_record(run, UnitId(MLP, args.layer, n)) for n in range(args.neurons)]
    subject = load_model(model.name)
    sim = LocalAllAtOnceSimulator(subject)
    explainer = LocalExplainer(subject)
    records = [r for rec in recs for r in scoring_records(rec, "top-and-random")]
    sim.simulate("numbers", records[:2])  # warm-up
    t0 = time.perf_counter()
    sim.simulate("words about science and chemistry", records)
    t_sim = time.perf_counter() - t0
    per_min = len(records) / t_sim * 60
    print(f"local all-at-once simulation: {len(records)} records of <=64 tokens in {t_sim:.1f} s = {per_min:.0f} records/min "
          "(target >= 200)")
    bf16 = LocalAllAtOnceSimulator(load_model(model.name, dtype=torch.bfloat16))
    bf16.simulate("numbers", records[:2])
    t0 = time.perf_counter()
    res16 = bf16.simulate("words about science and chemistry", records)
    t_16 = time.perf_counter() - t0
    res32 = sim.simulate("words about science and chemistry", records)
    import numpy as np

    diff = np.abs(np.concatenate([np.array(a) - np.array(b) for a, b in zip(res16.simulated, res32.simulated)])).max()
    print(f"  same with --simulator-dtype bfloat16: {len(records) / t_16 * 60:.0f} records/min "
          f"(max |bf16 - fp32| of the 0-10 predictions: {diff:.2f})")
    # baseline: one forward pass per activation slot for one record
    one = records[0]
    ids, slots = sim._prompt("words about science and chemistry", one)
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s_ in slots:
            subject.base()(input_ids=torch.tensor([ids[: s_ + 1]]), use_cache=False)
    t_slot = time.perf_counter() - t0
    t0 = time.perf_counter()
    sim.simulate("words about science and chemistry", [one])
    t_one = time.perf_counter() - t0
    print(f"one record: per-token passes {t_slot:.2f} s vs all-at-once {t_one:.2f} s")
    t_exp, t_score = [], []
    for rec in recs:
        t0 = time.perf_counter()
        exp = explainer.explain(explainer_train(rec), rec.stats.max)
        t_exp.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scored = score_simulation(sim, exp.text, scoring_records(rec, "top-and-random"), rec.stats.max, "top-and-random")
        t_score.append(time.perf_counter() - t0)
        tl = TokenLookupExplainer().explain(explainer_train(rec), rec.stats.max)
        print(f"  L{args.layer}/N{rec.unit.index}: local explanation {exp.text[:50]!r} score {scored.score:+.3f}; "
              f"token-lookup {tl.text[:40]!r}")
    print(f"one neuron, local explain + local score (10 records): {sum(t_exp) / len(t_exp):.1f} s + "
          f"{sum(t_score) / len(t_score):.1f} s")
    print("ratios:")
    print(f"  per-token passes / all-at-once, one record = {t_slot / t_one:.1f}")


if __name__ == "__main__":
    main()
