"""SAE training benchmark: TopK SAE and TopK transcoder training throughput against the forward pass that collects
their activations.

On the embedded SmolLM2 at layer 15, resid_post, width 4608, k 32 (the demo's SAE), in one process: collect the
activations of ``--tokens`` tokens of the embedded Wikipedia sample (the model runs up to layer 15 only; timed
after a warm-up batch), then train on them for ``--epochs`` epochs (timed, checkpoints off). Then the same for a
transcoder of layer 15's MLP on the same windows (pairs of its normed input and its output, one forward pass per
batch; the same width, k and epochs). Prints the throughputs and the ratio of training time per token-epoch to
forward time per token.

    python -m bench.sae_train [--tokens 16384] [--epochs 2] [--batch-tokens 1024] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=16384)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-tokens", type=int, default=1024)
    parser.add_argument("--width", type=int, default=4608)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--layer", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from analysis.corpus import load_corpus, make_windows, select_windows
    from analysis.models import load_model
    from analysis.progress import Progress
    from analysis.sae_train import TrainConfig, collect_activations, collect_pairs, fit_topk

    def sync():
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    subject = load_model("smollm2-135m", device=args.device)
    windows = [w for w in make_windows(load_corpus("enwiki-sample").documents, subject.tokenizer, 64)
               if len(w.token_ids) == 64]
    windows = select_windows(windows, args.tokens, seed=0)
    quiet = Progress(enabled=False)
    collect_activations(subject, windows[:16], args.layer, "resid_post", 16, quiet)  # warm-up
    sync()
    t0 = time.perf_counter()
    acts = collect_activations(subject, windows, args.layer, "resid_post", 16, quiet).to(args.device)
    sync()
    forward_s = time.perf_counter() - t0
    n = acts.shape[0]
    cfg = TrainConfig(width=args.width, k=args.k, epochs=args.epochs, batch_tokens=args.batch_tokens)
    fit_topk(acts[: args.batch_tokens * 2], TrainConfig(width=args.width, k=args.k, epochs=1,
                                                        batch_tokens=args.batch_tokens), progress=quiet)  # warm-up
    sync()
    t1 = time.perf_counter()
    fit = fit_topk(acts, cfg, progress=quiet)
    sync()
    train_s = time.perf_counter() - t1
    forward_tps = n / forward_s
    train_tps = n * args.epochs / train_s
    del acts
    t2 = time.perf_counter()
    x, y = (t.to(args.device) for t in collect_pairs(subject, windows, args.layer, 16, quiet))
    sync()
    pairs_s = time.perf_counter() - t2
    fit_topk(x[: args.batch_tokens * 2], TrainConfig(width=args.width, k=args.k, epochs=1,
                                                     batch_tokens=args.batch_tokens), progress=quiet,
             y=y[: args.batch_tokens * 2])  # warm-up
    sync()
    t3 = time.perf_counter()
    tc = fit_topk(x, cfg, progress=quiet, y=y)
    sync()
    tc_s = time.perf_counter() - t3
    m = x.shape[0]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}; layer {args.layer} resid_post, TopK "
          f"{args.width} k={args.k}, batch {args.batch_tokens} tokens")
    print(f"collect (forward to layer {args.layer}): {n:,} tokens in {forward_s:.1f} s = {forward_tps:,.0f} tok/s")
    print(f"train: {n:,} tokens x {args.epochs} epochs = {fit.steps} steps in {train_s:.1f} s = {train_tps:,.0f} tok/s "
          f"({1000 * train_s / fit.steps:.0f} ms/step); training FVU by epoch "
          + ", ".join(f"{v:.3f}" for v in fit.loss_by_epoch))
    print(f"ratio: training time per token-epoch / forward time per token = {forward_tps / train_tps:.2f}")
    print(f"transcoder L{args.layer} mlp_input -> mlp_out: collect pairs {m:,} tokens in {pairs_s:.1f} s = "
          f"{m / pairs_s:,.0f} tok/s; train {tc.steps} steps in {tc_s:.1f} s = {m * args.epochs / tc_s:,.0f} tok/s "
          f"({1000 * tc_s / tc.steps:.0f} ms/step); training FVU of the MLP output by epoch "
          + ", ".join(f"{v:.3f}" for v in tc.loss_by_epoch))


if __name__ == "__main__":
    main()
