"""Output-score benchmark: a layer's output scores batched across units against the forward passes they need.

On the embedded SmolLM2 (fp32), a small harvest of one layer in a temporary folder (the demo database may not
exist), output-weights explanations of ``--units`` neurons, then:
  (a) ``score_output`` over those explanations (model loaded already; store reads included);
  (b) the floor: the same windows and rows as plain forward passes with no hooks, in batches of the same size, to
      the log-softmax over the vocabulary (one clean row per window and one row per (unit, record));
  (c) the forked floor: the same forward shapes as (a) (the blocks before the layer once per window, the rows
      forked from there), to the log-softmax, without the clamp hook or the reductions.
Ratios (a)/(b) (target <= 1.5) and (a)/(c) are printed last.

    python -m bench.output_score [--layer 15] [--units 32] [--tokens 8192] [--threads 2] [--max-rows 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch


def plain_floor(subject, windows, chunks, layer: int, forked: bool) -> None:
    """Plain forward passes to the log-softmax of the rows ``score_output`` runs (``forked``: the same fork)."""
    from analysis.scorers.output import LOGITS_BUDGET, _forked

    V = subject.model.get_output_embeddings().weight.shape[0]
    with torch.inference_mode():
        for chunk in chunks:
            rows = [w for w, _cs in chunk] + [w for w, cs in chunk for _ in cs]
            if forked:
                enc = subject.encode([windows[w] for w, _cs in chunk])
                take = torch.tensor(list(range(len(chunk))) + [j for j, (_w, cs) in enumerate(chunk) for _ in cs])
                with _forked(subject, layer, take, len(chunk)):
                    hidden = subject.base()(input_ids=enc.input_ids, use_cache=False).last_hidden_state
            else:
                enc = subject.encode([windows[w] for w in rows])
                hidden = subject.base()(input_ids=enc.input_ids, use_cache=False).last_hidden_state
            p = enc.n_prefix
            step = max(1, LOGITS_BUDGET // ((hidden.shape[1] - p) * V))
            for b in range(0, hidden.shape[0], step):
                torch.log_softmax(subject.logits(hidden[b:b + step, p:]).float(), -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-rows", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from analysis.__main__ import main as cli
    from analysis.jobs.reads import unit_records
    from analysis.jobs.score import ScoreJob
    from analysis.models import load_model
    from analysis.progress import Progress
    from analysis.scorers import output
    from cache.store import open_store

    print(f"# Output-score benchmark\n\ntorch threads {args.threads}, load average {os.getloadavg()[0]:.2f} at start, "
          f"{os.cpu_count()} CPUs, device {args.device}")
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.duckdb"
        common = ["--db", str(db), "--model", "smollm2-135m", "--quiet"]
        t0 = time.perf_counter()
        assert cli(["harvest", *common, "--layers", str(args.layer), "--max-tokens", str(args.tokens),
                    "--device", args.device]) == 0
        print(f"harvest of L{args.layer}, {args.tokens} tokens: {time.perf_counter() - t0:.0f} s")
        units = f"0-{args.units - 1}"
        t0 = time.perf_counter()
        assert cli(["explain", *common, "--layer", str(args.layer), "--neurons", units, "--explainer",
                    "output-weights", "--device", args.device]) == 0
        print(f"output-weights explanations of {args.units} units (model load included): "
              f"{time.perf_counter() - t0:.1f} s")
        recs = unit_records(db, "smollm2-135m", args.layer, list(range(args.units)))
        with open_store(db, read_only=True) as s:
            exps = [(recs[u], e.text) for u in range(args.units) for e in s.explanations.of_unit(
                recs[u].run_id, recs[u].unit) if e.explainer == "output-weights"]
        subject = load_model("smollm2-135m", device=args.device)
        job = ScoreJob(layer=args.layer, neurons=units, model="smollm2-135m", scorer="output", device=args.device)
        windows, where, clamps = [], {}, []
        for rec, _t in exps:
            for r in rec.random_sample[:output.RECORDS]:
                where.setdefault(r.window_id, len(windows))
                if len(windows) < len(where):
                    windows.append(list(r.token_ids))
                clamps.append(output.Clamp(rec.unit.index, 1.0, where[r.window_id]))
        chunks = output._chunks(windows, clamps, args.max_rows)
        plain_floor(subject, windows, chunks[:1], args.layer, False)  # warm-up
        t0 = time.perf_counter()
        results = output.score_output(job, db, exps, Progress(enabled=False), subject=subject,
                                      max_rows=args.max_rows)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain_floor(subject, windows, chunks, args.layer, False)
        t_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        plain_floor(subject, windows, chunks, args.layer, True)
        t_fork = time.perf_counter() - t0
    scores = sorted(r.score for r in results if r.score is not None)
    n_tok = sum(len(windows[c.window]) for c in clamps)
    print(f"{len(exps)} explanations, {len(clamps)} clamped rows over {len(windows)} windows ({n_tok} clamped "
          f"tokens), {len(chunks)} forward passes of <= {args.max_rows} rows")
    if scores:
        q = [scores[int(f * (len(scores) - 1))] for f in (0, 0.25, 0.5, 0.75, 1)]
        print(f"output AUROC of the output-weights explanations, min / quartiles / max: "
              f"{' / '.join(f'{x:.3f}' for x in q)} ({len(scores)} scored)")
    print(f"(a) score_output                  {t_ours:7.1f} s")
    print(f"(b) floor: plain forwards         {t_plain:7.1f} s   ratio (a)/(b) {t_ours / t_plain:.2f} (target <= 1.5)")
    print(f"(c) forked forwards, no clamp     {t_fork:7.1f} s   ratio (a)/(c) {t_ours / t_fork:.2f}")
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
