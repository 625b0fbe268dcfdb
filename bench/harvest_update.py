"""The harvest's state updates timed apart from its forward passes, batch by batch, in one process: the update's
share of the forward is what separates the harvest from its floor, and it is less at the mercy of a noisy VM than
two processes' wall times.

    python -m bench.harvest_update [--checkout PATH] [--batches 26]

``--checkout`` runs another checkout's ``analysis`` package (e.g. a ``git worktree`` of an older commit) on the
same windows, for an old-vs-new comparison (with ``NEURON_VIEWER_HOME`` set to this checkout's ``data/``, where
the model and corpus are); alternate the two and compare the ratios. The first two batches
(compiles, allocator) are not counted.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkout", default=str(Path(__file__).resolve().parents[1]))
    ap.add_argument("--batches", type=int, default=26)
    args = ap.parse_args()
    sys.path.insert(0, args.checkout)
    from analysis.activations import site_activations
    from analysis.corpus import load_corpus, make_windows, select_windows
    from analysis.config import HarvestConfig
    from analysis.harvest.driver import pad_batch
    from analysis.harvest.state import HarvestState, token_table
    from analysis.models import load_model

    subject = load_model("smollm2-135m")
    layers = list(range(subject.info.n_layers))
    cfg = HarvestConfig(layers=tuple(layers), batch_size=32)
    windows = [w for w in make_windows(load_corpus("enwiki-sample").documents, subject.tokenizer, 64)
               if len(w.token_ids) == 64]
    windows = select_windows(windows, 64 * 32 * args.batches, seed=0)
    table_ids, row_of = token_table([w.token_ids for w in windows], cfg.token_table, cfg.min_token_count,
                                    len(subject.tokenizer))
    state = HarvestState.empty(cfg, subject.info.d_mlp, len(table_ids))
    sites = [(layer, "mlp_in") for layer in layers]
    forward = update = 0.0
    for i, b in enumerate(range(0, len(windows), 32)):
        enc, wids = pad_batch(subject, windows[b : b + 32], 64)
        t0 = time.perf_counter()
        acts = site_activations(subject, enc.input_ids, enc.attention_mask, sites)
        acts = {("mlp", layer): a[:, enc.n_prefix :].float() for (layer, _site), a in acts.items()}
        t1 = time.perf_counter()
        state.update(acts, enc.real, wids, row_of[enc.input_ids[:, enc.n_prefix :]])
        t2 = time.perf_counter()
        if i >= 2:
            forward, update = forward + t1 - t0, update + t2 - t1
    print(f"{args.checkout}: {args.batches - 2} batches: forward {forward:.1f} s, update {update:.2f} s = "
          f"{update / forward:.3f} of the forward")


if __name__ == "__main__":
    main()
