"""Neuron2Graph on the embedded SmolLM2: seconds per neuron and firing P/R/F1 vs token-lookup, by depth.

    python -m bench.n2g [--db data/demo.duckdb] [--model smollm2-135m] [--device cpu] [--layers 0,15,29]
                         [--neurons 48] [--dtypes float32,bfloat16] [--seed S] [--no-plain] [--set FIELD=V ...]
                         [--variant FIELD=V[,FIELD=V] ...]

ΔF1 is N2G's firing F1 minus token-lookup's, averaged over the sample's neurons, with the standard error of that
mean (the neurons' differences' standard deviation over √n): how far a sample's margin is from noise.

For each layer, the same seeded random sample of neurons (by default seeded by the layer: the sample settings
were tuned on; ``--seed S`` draws another one, seeded by (S, layer), for a measurement nobody tuned on) is
fitted in one batch (as `python -m analysis n2g` does per chunk) without and with augmentation; the token-lookup baseline is fitted on the same train records.
``--set`` changes N2GConfig fields for every fit; each ``--variant`` adds an augmented fit with fields changed, in the
same run, for speed ratios (``row_tokens=1``: the prober runs every probe as its own sequence, no shared prefixes,
as before packing; ``extra_records=0``: without the 10 extra train records a top-30 harvest gives by default).
Prints a markdown table; nothing is written to the cache.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.config import default_db
from analysis.models import load_model
from analysis.n2g.fit import ModelProber, N2GConfig
from analysis.n2g.pipeline import fit_layer
from analysis.types import MLP, UnitId
from cache.store import open_store


def _fields(pairs: list[str]) -> dict:
    """N2GConfig fields from 'name=value' strings, typed like the field's default."""
    out = {}
    for pair in pairs:
        name, value = pair.split("=")
        default = 256 if name == "row_tokens" else getattr(N2GConfig, name)
        out[name] = value.lower() in ("1", "true") if isinstance(default, bool) else type(default)(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--model", default="smollm2-135m", help="as harvested into --db (default: %(default)s)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--neurons", type=int, default=48)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=None, help="sample seed (default: the layer)")
    ap.add_argument("--no-plain", action="store_true", help="only the augmented fit")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="another N2GConfig field for every run, e.g. --set max_context=8")
    ap.add_argument("--variant", action="append", default=[], metavar="FIELD=VALUE[,FIELD=VALUE]",
                    help="also fit (augmented) with these fields changed, in the same run, for ratios; row_tokens=1 "
                         "is the prober without shared prefixes")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for dtype in args.dtypes.split(","):
        subject = load_model(args.model, device=args.device, dtype=getattr(torch, dtype))
        for layer in map(int, args.layers.split(",")):
            rng = np.random.default_rng(layer if args.seed is None else (args.seed, layer))
            units = sorted(rng.choice(subject.info.d_mlp, args.neurons, replace=False))
            with open_store(args.db, read_only=True) as store:
                run = store.runs.find(args.model, layer)
                recs = [store.records.unit_record(run, UnitId(MLP, layer, int(u))) for u in units]
            runs = [(augment, "") for augment in (False, True)
                    if augment or (dtype == "float32" and not args.no_plain)]
            runs += [(True, v) for v in args.variant]
            for augment, variant in runs:
                fields = _fields(args.set + (variant.split(",") if variant else []))
                row_tokens = fields.pop("row_tokens", 256)
                prober = ModelProber(subject, layer, row_tokens=row_tokens)
                config = N2GConfig(augment=augment, **fields)
                t0 = time.perf_counter()
                res = [r for chunk in fit_layer(subject, layer, recs, config, len(recs), prober) for r in chunk]
                dt = (time.perf_counter() - t0) / len(recs)

                def mean(f):
                    return float(np.mean([f(r) for r in res]))

                rows.append(dict(
                    layer=layer, dtype=dtype, augment=augment, packed=row_tokens > 1, variant=variant, s=dt,
                    tok_layer=prober.n_tokens[False] / len(recs), tok_lm=prober.n_tokens[True] / len(recs),
                    p=mean(lambda r: r.firing.precision), r=mean(lambda r: r.firing.recall),
                    f1=mean(lambda r: r.firing.f1), bp=mean(lambda r: r.baseline_firing.precision),
                    br=mean(lambda r: r.baseline_firing.recall), bf1=mean(lambda r: r.baseline_firing.f1),
                    patterns=mean(lambda r: len(r.graph.patterns())),
                    se=float(np.std([r.firing.f1 - r.baseline_firing.f1 for r in res], ddof=1) / np.sqrt(len(res)))
                    if len(res) > 1 else float("nan")))
                x = rows[-1]
                print(f"L{layer} {dtype} augment={augment} packed={row_tokens > 1} {variant}: {dt:.2f} s/neuron; "
                      f"firing P/R/F1 {x['p']:.2f}/{x['r']:.2f}/{x['f1']:.2f} vs token-lookup "
                      f"{x['bp']:.2f}/{x['br']:.2f}/{x['bf1']:.2f}", flush=True)
            base = next(y for y in rows if y["layer"] == layer and y["dtype"] == dtype and y["augment"]
                        and not y["variant"])
            for x in rows:
                if x["layer"] == layer and x["dtype"] == dtype and x["variant"]:
                    print(f"L{layer} {dtype}: {x['variant']} / defaults = {x['s'] / base['s']:.2f}x time", flush=True)
    seed = "the layer" if args.seed is None else f"({args.seed}, layer)"
    print(f"\n{args.neurons} random neurons per layer (seed {seed}), 10 train / 10 held-out top records each "
          f"(+ up to extra_records train records past the first 20: {N2GConfig.extra_records} unless set), "
          f"{''.join(x + ', ' for x in args.set)}{args.threads} threads\n")
    print("| layer | dtype | augment | prober | variant | s/neuron | tokens/neuron (to layer / whole model) | "
          "patterns | N2G firing P/R/F1 | token-lookup P/R/F1 | ΔF1 ± s.e. |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for x in rows:
        print(f"| {x['layer']} | {x['dtype']} | {'on' if x['augment'] else 'off'} | "
              f"{'packed' if x['packed'] else 'one per row'} | {x['variant'] or '-'} | {x['s']:.2f} | "
              f"{x['tok_layer']:.0f} / {x['tok_lm']:.0f} | {x['patterns']:.0f} | "
              f"{x['p']:.2f}/{x['r']:.2f}/{x['f1']:.2f} | {x['bp']:.2f}/{x['br']:.2f}/{x['bf1']:.2f} | "
              f"{x['f1'] - x['bf1']:+.3f} ± {x['se']:.3f} |")


if __name__ == "__main__":
    main()
