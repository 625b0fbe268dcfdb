"""Start from a prompt, timed against one plain forward pass of the same text (embedded SmolLM2, fp32, CPU, all
30 x 1,536 = 46,080 neurons), in the same run: the attribution of every unit to one target (its pass reads every
activation too), the ranking by relative activation from those, the real ablation of the top 32, a graph of 30
units, and the whole report the page and the CLI run. Also the rank correlation between the linear
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
from analysis.attribution.units import relative, top_units
from analysis.corpus import load_corpus, make_windows
from analysis.jobs.attribute import AttributeJob, report
from analysis.models import load_model
from bench.causal import best_of


def prompt_texts(subject, tokens: int, n: int, seed: int) -> list[str]:
    """``n`` windows of ``tokens`` tokens of the embedded Wikipedia sample, drawn with ``seed``, as text."""
    windows = [w for w in make_windows(load_corpus("enwiki-sample").documents, subject.tokenizer, tokens)
               if len(w.token_ids) == tokens]
    return [subject.tokenizer.decode(list(w.token_ids)) for w in random.Random(seed).sample(windows, n)]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=38)
    args = ap.parse_args()
    torch.manual_seed(0)
    subject = load_model("smollm2-135m")
    texts = prompt_texts(subject, args.tokens, args.prompts + 1, args.seed)
    rep = report(subject, AttributeJob(text=texts[0], check=32))  # what the page and the CLI run (no graph)
    ids, target, att = rep.token_ids, rep.target, rep.attribution
    x = torch.tensor([ids])

    def plain():
        with torch.inference_mode():
            subject.model(input_ids=x)

    floor = best_of(plain, args.repeat)
    rows = [("attribution of every unit (and its activation)", best_of(lambda: attribute(subject, ids, target),
                                                                      args.repeat), 3),
            ("ranking by relative activation, from those", best_of(lambda: top_units(relative(att.acts, {}), 20),
                                                                   args.repeat), 1.3),
            ("ablation check of the top 32", best_of(lambda: check_by_ablation(subject, ids, target,
                                                                               [c.unit for c in rep.checked]),
                                                     args.repeat), 6),
            ("graph of 30 units", best_of(lambda: connect(subject, ids, att, [c.unit for c in rep.checked[:30]]), 1),
             40),
            ("the whole report without the graph", best_of(lambda: report(subject, AttributeJob(text=texts[0], check=32)),
                                                           args.repeat), None)]
    print(f"SmolLM2-135M fp32, {len(ids)} tokens, {torch.get_num_threads()} threads; plain forward {floor * 1e3:.0f} ms")
    for name, t, target_ratio in rows:
        ratio = t / floor
        verdict = "" if target_ratio is None else \
            f"  (target ≤ {target_ratio}x: {'met' if ratio <= target_ratio else 'missed'})"
        print(f"  {name:48s} {t * 1e3:8.0f} ms  {ratio:6.2f}x the forward{verdict}")

    bands = {"layers 0-9": range(0, 10), "layers 10-19": range(10, 20), "layers 20-29": range(20, 30)}
    rhos: dict[str, list[float]] = {b: [] for b in bands}
    overall = []
    for text in texts[1:]:
        checked = report(subject, AttributeJob(text=text, check=32)).checked
        rho = spearman([c.estimate for c in checked], [c.real for c in checked])
        if rho is not None:
            overall.append(rho)
        for band, layers in bands.items():
            sub = [c for c in checked if c.unit.unit.layer in layers]
            r = spearman([c.estimate for c in sub], [c.real for c in sub])
            if r is not None:
                rhos[band].append(r)
    print(f"Spearman(estimate, real ablation) over the top 32 by |attribution|, {len(texts) - 1} prompts "
          f"(seed {args.seed}): median {statistics.median(overall):+.3f} (min {min(overall):+.3f}, max {max(overall):+.3f})")
    for band, vals in rhos.items():
        if vals:
            print(f"  {band}: median {statistics.median(vals):+.3f} over {len(vals)} prompts with ≥ 3 units there")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
