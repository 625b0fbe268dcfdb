"""API simulation benchmark: records/min of ``api-all-at-once`` through HTTP against the local OpenAI-compatible
test server (tests/openai_server.py, the embedded model computing real log-probabilities), against
``local-all-at-once`` in-process on the same records, and against the server's own work without HTTP.

    python -m bench.api [--db data/demo.duckdb] [--layer 15] [--neurons 2] [--logprobs 20]

Ratios measured in this run: HTTP path / in-process simulator (what a user pays for going through a server on
this machine), and HTTP path / the server's computation called directly (the HTTP + JSON overhead alone). Also
the plan line's token estimate against the tokens the server counted.
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
    ap.add_argument("--neurons", type=int, default=2)
    ap.add_argument("--logprobs", type=int, default=20)
    args = ap.parse_args()
    import torch

    from analysis.api import CHARS_PER_TOKEN, ApiClient, ApiConfig
    from analysis.models import load_model
    from analysis.simulate import ApiAllAtOnceSimulator, LocalAllAtOnceSimulator, record_prompt
    from analysis.splits import scoring_records
    from cache.store import open_store
    from tests.openai_server import completion_logprobs, serve

    torch.set_num_threads(2)
    with open_store(args.db, read_only=True) as s:
        model = s.catalog.models()[0]
        run = s.runs.find(model.name, args.layer)
        recs = [s.records.unit_record(run, UnitId(MLP, args.layer, n)) for n in range(args.neurons)]
    records = [r for rec in recs for r in scoring_records(rec, "top-and-random")]
    subject = load_model(model.name)
    explanation = "words about science and chemistry"
    local = LocalAllAtOnceSimulator(subject)
    local.simulate("numbers", records[:2])  # warm-up
    t0 = time.perf_counter()
    local.simulate(explanation, records)
    t_local = time.perf_counter() - t0

    prompts = [record_prompt(explanation, list(r.tokens))[0] for r in records]
    completion_logprobs(subject, prompts[0], args.logprobs)  # warm-up
    t0 = time.perf_counter()
    for p in prompts:
        completion_logprobs(subject, p, args.logprobs)
    t_direct = time.perf_counter() - t0

    with serve(subject) as url:
        client = ApiClient(ApiConfig(base_url=url, model=model.name, logprobs=args.logprobs, reply_cache=False))
        sim = ApiAllAtOnceSimulator(client)
        sim.simulate("numbers", records[:1])
        t0 = time.perf_counter()
        res = sim.simulate(explanation, records)
        t_http = time.perf_counter() - t0
    n = len(records)
    estimate = sum(len(p) for p in prompts) / CHARS_PER_TOKEN
    print(f"{n} records (L{args.layer}, {args.neurons} neurons, top-and-random), --api-logprobs {args.logprobs}:")
    print(f"  local-all-at-once in-process : {n / t_local * 60:7.0f} records/min")
    print(f"  server work without HTTP     : {n / t_direct * 60:7.0f} records/min (plain forward + top-k per record)")
    print(f"  api-all-at-once through HTTP : {n / t_http * 60:7.0f} records/min")
    print(f"  ratio HTTP / in-process      : {t_http / t_local:.2f}x the time")
    print(f"  ratio HTTP / server work     : {t_http / t_direct:.2f}x the time (HTTP + JSON overhead: "
          f"{(t_http - t_direct) / n * 1000:.0f} ms per record)")
    print(f"  tokens: server counted {res.usage['prompt_tokens']:,} prompt tokens; the plan line's estimate "
          f"({CHARS_PER_TOKEN} chars/token) {estimate:,.0f} ({estimate / res.usage['prompt_tokens']:.2f}x); "
          f"slots with a value outside the top: {res.params.get('incomplete_slots', 0)} of "
          f"{sum(len(r.tokens) for r in records)}")


if __name__ == "__main__":
    main()
