"""Harvest with an SAE or a transcoder attached against the same harvest without it, in one run.

Embedded SmolLM2, the same windows of the embedded Wikipedia sample, one process per part:
  (a) neurons of layer L only;            (b) + the SAE's features;  (c) + the transcoder's features (same pass);
  (d) neurons of all 30 layers (the demo); (e) + the SAE;             (f) + the transcoder.
The SAE and the transcoder are the demo's (``data/saes/...`` after ``make demo``) or, if absent, random TopK ones
of the demo's shape (width 4608, k 32; resid_post of layer L, and the MLP's normed input -> its output): the cost
depends on the shape, not on the weights.

    python -m bench.harvest_sae [--tokens 16384] [--layer 15] [--sae DIR] [--transcoder DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def _dictionary(spec: str | None, layer: int, transcoder: bool):
    import torch

    from analysis.sae.load import load_sae
    from analysis.sae.model import finish, SAE

    if spec and Path(spec).exists():
        return load_sae(spec)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(4608, 576, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    return finish(SAE(W_enc=W.T.contiguous(), b_enc=torch.zeros(4608), W_dec=W, b_dec=torch.zeros(576),
                       architecture="topk", k=32, layer=layer, site="mlp_input" if transcoder else "resid_post",
                       output_site="mlp_out" if transcoder else None, apply_b_dec_to_input=not transcoder,
                       name="random-bench"))


def part(name: str, tokens: int, layer: int, sae_spec: str | None, tc_spec: str | None) -> dict:
    from analysis.activations import neuron_reader, sae_reader
    from analysis.config import HarvestConfig
    from analysis.harvest.driver import run_harvest
    from analysis.harvest.summary import summarise
    from analysis.models import load_model
    from bench.harvest import _windows

    subject = load_model("smollm2-135m")
    layers = [layer] if name.startswith("layer") else list(range(subject.info.n_layers))
    readers = [neuron_reader(l) for l in layers]
    if name.endswith("+sae"):
        readers.append(sae_reader(_dictionary(sae_spec, layer, False)))
    if name.endswith("+tc"):
        readers.append(sae_reader(_dictionary(tc_spec, layer, True)))
    windows = _windows(subject, tokens)
    cfg = HarvestConfig(layers=tuple(layers))
    run_harvest(subject, windows[:32], cfg, progress=False, readers=readers)  # warm-up
    t0 = time.perf_counter()
    state, table = run_harvest(subject, windows, cfg, progress=False, readers=readers)
    summarise(state, table)
    seconds = time.perf_counter() - t0
    n_tok = sum(len(w.token_ids) for w in windows)
    return {"part": name, "tokens": n_tok, "seconds": seconds, "tok_per_s": n_tok / seconds,
            "units": sum(s.mean.shape[0] for s in state.layers.values())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--layer", type=int, default=15)
    ap.add_argument("--sae", default=None)
    ap.add_argument("--transcoder", default=None)
    ap.add_argument("--part", default=None)
    args = ap.parse_args()
    if args.part:
        print(json.dumps(part(args.part, args.tokens, args.layer, args.sae, args.transcoder)))
        return
    results = {}
    for name in ("layer", "layer+sae", "layer+tc", "all", "all+sae", "all+tc"):
        cmd = [sys.executable, "-m", "bench.harvest_sae", "--part", name, "--tokens", str(args.tokens),
               "--layer", str(args.layer)]
        cmd += (["--sae", args.sae] if args.sae else []) + (["--transcoder", args.transcoder] if args.transcoder else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(out.stderr)
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:<10} {r['units']:>7,} units  {r['seconds']:7.1f} s  {r['tok_per_s']:7.0f} tok/s")
    print(f"layer {args.layer} + SAE vs layer {args.layer} alone: "
          f"{results['layer+sae']['seconds'] / results['layer']['seconds']:.2f}x (target <= 1.2)")
    print(f"layer {args.layer} + transcoder vs layer {args.layer} alone: "
          f"{results['layer+tc']['seconds'] / results['layer']['seconds']:.2f}x (target <= 1.2)")
    print(f"all layers + SAE vs all layers: {results['all+sae']['seconds'] / results['all']['seconds']:.2f}x")
    print(f"all layers + transcoder vs all layers: {results['all+tc']['seconds'] / results['all']['seconds']:.2f}x")


if __name__ == "__main__":
    main()
