"""Viewer benchmark on the demo cache: neuron page server time, and live text -> heatmap time.

    python -m bench.viewer_page [--db data/demo.duckdb] [--neurons 20]

(1) Neuron page from the cache: the page script run by Streamlit's AppTest (server-side time: store reads,
    heatmap HTML, histogram figure), median over random neurons; baseline in the same run: the same top-20
    records recomputed by running the model over their windows (what a viewer without the cache must do).
(2) Live text of 256 tokens -> activations of one layer -> heatmap HTML, model already loaded; baseline:
    the plain HF forward pass with the lm_head on the same tokens.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
from pathlib import Path

from analysis.config import default_db
from analysis.types import MLP, UnitId

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(default_db()))
    ap.add_argument("--neurons", type=int, default=20)
    args = ap.parse_args()
    import torch
    from streamlit.testing.v1 import AppTest

    from analysis.activations import mlp_activations
    from analysis.models import load_model
    from cache.store import open_store
    from viewer.components.heatmap import records_html

    torch.set_num_threads(2)
    os.environ["NEURON_VIEWER_DB"] = args.db
    with open_store(args.db, read_only=True) as s:
        model = s.catalog.models()[0]
        run = s.runs.find(model.name)
    rng = random.Random(0)
    picks = [(rng.choice(run.layers), rng.randrange(model.d_mlp)) for _ in range(args.neurons)]
    page = str(REPO / "viewer" / "views" / "neuron.py")
    AppTest.from_file(page, default_timeout=120).run()  # warm imports
    page_s = []
    for layer, neuron in picks:
        at = AppTest.from_file(page, default_timeout=120)
        at.query_params.update(model=model.name, layer=str(layer), neuron=str(neuron))
        t0 = time.perf_counter()
        at.run()
        page_s.append(time.perf_counter() - t0)
        assert not at.exception, at.exception
    subject = load_model(model.name)
    base_s = []
    with open_store(args.db, read_only=True) as s:
        for layer, neuron in picks[:5]:
            rec = s.records.unit_record(run, UnitId(MLP, layer, neuron))
            t0 = time.perf_counter()
            ids = torch.tensor([r.token_ids for r in rec.most_positive_activation_records if len(r.token_ids) == 64])
            mlp_activations(subject, ids, None, [layer])
            base_s.append(time.perf_counter() - t0)
    page_med, base_med = statistics.median(page_s), statistics.median(base_s)
    print(f"neuron page from cache (AppTest server time, median of {len(page_s)}): {page_med * 1000:.0f} ms "
          f"(p90 {sorted(page_s)[int(0.9 * len(page_s)) - 1] * 1000:.0f} ms; target < 300 ms)")
    print(f"baseline: recompute the top-20 records with the model (median of 5): {base_med * 1000:.0f} ms")

    from bench.corpus_text import TEXT  # a fixed English paragraph

    ids = subject.tokenizer(TEXT, add_special_tokens=False).input_ids[:256]
    assert len(ids) == 256
    tokens = subject.tokenizer.batch_decode([[i] for i in ids])
    layer = model.n_layers // 2
    live_s, full_s = [], []
    for _ in range(5):
        t0 = time.perf_counter()
        acts = mlp_activations(subject, torch.tensor([ids]), None, [layer])[layer][0]

        class R:
            pass

        r = R()
        r.tokens, r.activations = tokens, acts[:, 7].tolist()
        records_html([r], max(r.activations))
        torch.topk(acts.max(0).values, 12)
        live_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            subject.model(input_ids=torch.tensor([ids]))
        full_s.append(time.perf_counter() - t0)
    live_med, full_med = statistics.median(live_s), statistics.median(full_s)
    print(f"live text, 256 tokens, layer {layer} -> heatmap (median of 5): {live_med * 1000:.0f} ms (target < 1 s)")
    print(f"baseline: plain HF forward with lm_head, same tokens: {full_med * 1000:.0f} ms")
    print("ratios:")
    print(f"  recompute-records baseline / cached page = {base_med / page_med:.1f}")
    print(f"  full forward / live heatmap (early stop)  = {full_med / live_med:.2f}")


if __name__ == "__main__":
    main()
