"""Causal lens speed: ablation on 256 tokens vs one plain forward pass, steering 64 new tokens vs plain
generation (embedded SmolLM2, fp32, CPU), measured in the same run.

    python -m bench.causal [--tokens 256] [--new 64] [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from analysis.causal import Edit, ablate, generate, steering_edit, unit_edit
from analysis.corpus import load_corpus
from analysis.models import load_model
from analysis.types import MLP, UnitId


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--neuron", type=int, default=3)
    args = ap.parse_args()
    subject = load_model("smollm2-135m")
    text = " ".join(d.text for d in load_corpus("enwiki-sample").documents[:3])
    ids = subject.tokenize(text)[: args.tokens]
    unit = UnitId(MLP, args.layer, args.neuron)
    x = torch.tensor([subject.bos_prefix + ids])

    def plain():
        with torch.inference_mode():
            subject.model(input_ids=x, use_cache=False).logits.float().log_softmax(-1)

    plain()
    t_plain = best_of(plain, args.repeat)
    t_ablate = best_of(lambda: ablate(subject, ids, unit, Edit(0.0, 0.0)), args.repeat)
    prompt = ids[:16]
    t_gen = best_of(lambda: generate(subject, prompt, args.new, 0.0, 0), max(2, args.repeat // 2))
    edit = steering_edit(unit, 1.0, clamp=10.0)

    def steered():
        with unit_edit(subject, unit, edit):
            generate(subject, prompt, args.new, 0.0, 0)

    t_steer = best_of(steered, max(2, args.repeat // 2))
    print(f"threads {torch.get_num_threads()}, {len(ids)} tokens, L{args.layer}/N{args.neuron}, best of {args.repeat}")
    print(f"plain forward (to log-softmax)      {t_plain * 1000:8.1f} ms")
    print(f"ablate (prefix once, then 2 rows)   {t_ablate * 1000:8.1f} ms   ratio {t_ablate / t_plain:.2f} (target <= 2)")
    print(f"generate {args.new} greedy                   {t_gen * 1000:8.1f} ms")
    print(f"generate {args.new} greedy, steered          {t_steer * 1000:8.1f} ms   ratio {t_steer / t_gen:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
