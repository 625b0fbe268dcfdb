"""Start from a prompt, timed against one plain forward pass of the same text (embedded SmolLM2, fp32, CPU, all
30 x 1,536 = 46,080 neurons), in the same run: the ranking by relative activation, the attribution of every unit
to one target, the real ablation of the top 32, a graph of 30 units. Also the rank correlation between the linear
estimates and the real effects on a seeded sample of prompts (windows of the embedded Wikipedia sample, drawn
before looking), per layer band.

    python -m bench.attribution [--tokens 64] [--repeat 3] [--prompts 8] [--seed 38]
"""

from __future__ import annotations

import argparse
import random
import statistics

import torch

from analysis.attribution.check import check_by_ablation, spearman
from analysis.attribution.frozen import attribute
from analysis.attribution.graph import connect
from analysis.attribution.units import prompt_activations, relative, Target, top_units
from analysis.corpus import load_corpus, make_windows
from analysis.models import load_model
from bench.causal import best_of


def prompt_windows(subject, tokens: int, n: int, seed: int) -> list[list[int]]:
    """``n`` windows of ``tokens`` tokens of the embedded Wikipedia sample, drawn with ``seed``."""
    windows = [w for w in make_windows(load_corpus("enwiki-sample").documents, subject.tokenizer, tokens)
               if len(w.token_ids) == tokens]
    return [subject.bos_prefix + list(w.token_ids) for w in random.Random(seed).sample(windows, n)]


def by_abs(att, k: int):
    from analysis.attribution.units import UnitAt

    picked = top_units({key: s[1:].abs() for key, s in att.scores.items()}, k)
    return [UnitAt(u.unit, u.position + 1, float(att.scores[(u.unit.source, u.unit.layer)][u.position + 1, u.unit.index]))
            for u in picked]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=38)
    args = ap.parse_args()
    torch.manual_seed(0)
    subject = load_model("smollm2-135m")
    windows = prompt_windows(subject, args.tokens, args.prompts + 1, args.seed)
    ids = windows[0]
    x = torch.tensor([ids])
    with torch.inference_mode():
        logits = subject.model(input_ids=x).logits[0, -1]
    target = Target(len(ids) - 1, int(logits.argmax()))
    maxima = {}

    def plain():
        with torch.inference_mode():
            subject.model(input_ids=x)

    def ranking():
        acts = prompt_activations(subject, ids)
        top_units(relative(acts, maxima), 20)

    att = attribute(subject, ids, target)
    checked_units = by_abs(att, 32)
    nodes = by_abs(att, 30)
    floor = best_of(plain, args.repeat)
    rows = [("ranking by relative activation", best_of(ranking, args.repeat), 1.3),
            ("attribution of every unit to one target", best_of(lambda: attribute(subject, ids, target), args.repeat), 3),
            ("ablation check of the top 32", best_of(lambda: check_by_ablation(subject, ids, target, checked_units),
                                                     args.repeat), 6),
            ("graph of 30 units", best_of(lambda: connect(subject, ids, att, nodes), 1), 40)]
    print(f"SmolLM2-135M fp32, {len(ids)} tokens, {torch.get_num_threads()} threads; plain forward {floor * 1e3:.0f} ms")
    for name, t, target_ratio in rows:
        ratio = t / floor
        print(f"  {name:42s} {t * 1e3:8.0f} ms  {ratio:6.2f}x the forward  (target ≤ {target_ratio}x: "
              f"{'met' if ratio <= target_ratio else 'missed'})")

    bands = {"layers 0-9": range(0, 10), "layers 10-19": range(10, 20), "layers 20-29": range(20, 30)}
    rhos: dict[str, list[float]] = {b: [] for b in bands}
    overall = []
    for ids in windows[1:]:
        x = torch.tensor([ids])
        with torch.inference_mode():
            t = Target(len(ids) - 1, int(subject.model(input_ids=x).logits[0, -1].argmax()))
        att = attribute(subject, ids, t)
        checked = check_by_ablation(subject, ids, t, by_abs(att, 32))
        rho = spearman([c.estimate for c in checked], [c.real for c in checked])
        if rho is not None:
            overall.append(rho)
        for band, layers in bands.items():
            sub = [c for c in checked if c.unit.unit.layer in layers]
            r = spearman([c.estimate for c in sub], [c.real for c in sub])
            if r is not None:
                rhos[band].append(r)
    print(f"Spearman(estimate, real ablation) over the top 32 by |attribution|, {len(windows) - 1} prompts "
          f"(seed {args.seed}): median {statistics.median(overall):+.3f} (min {min(overall):+.3f}, max {max(overall):+.3f})")
    for band, vals in rhos.items():
        if vals:
            print(f"  {band}: median {statistics.median(vals):+.3f} over {len(vals)} prompts with ≥ 3 units there")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
