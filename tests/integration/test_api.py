"""API explainer and simulator: the real openai client against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import json
import socket
import time

import numpy as np
import pytest

from analysis.__main__ import main
from analysis.api import ApiClient, ApiConfig
from analysis.explain import ApiExplainer
from analysis.simulate import ApiJsonSimulator
from analysis.types import UserError
from tests.helpers import Rec
from tests.openai_server import HITS, IN_FLIGHT, hits, serve

RECS = [Rec([" The", " Paris", " metro"], [1, 2, 3], [0.0, 5.0, 0.5]), Rec([" In", " Paris"], [4, 2], [0.0, 4.0])]


def test_explainer_and_simulator_over_http(server):
    cfg = ApiConfig(base_url=server, model="good", max_retries=0)
    exp = ApiExplainer(ApiClient(cfg)).explain(RECS, 5.0)
    assert exp.text == "places in France, like Paris" and exp.params["model"] == "good"
    res = ApiJsonSimulator(ApiClient(cfg)).simulate(exp.text, RECS)
    assert res.error is None and res.simulated == [[0.0, 10.0, 0.0], [0.0, 10.0]]


def test_server_errors_are_retried_with_backoff(server):
    for model in ("flaky", "ratelimit"):
        HITS.pop(("chat", model), None)
        res = ApiJsonSimulator(ApiClient(ApiConfig(base_url=server, model=model, max_retries=3))).simulate("x", RECS[:1])
        assert res.error is None, res.error
    assert hits("flaky") == 3 and hits("ratelimit") == 2


def test_failures_are_recorded_not_raised(server):
    res = ApiJsonSimulator(ApiClient(ApiConfig(base_url=server, model="garbage", max_retries=0))).simulate("x", RECS)
    assert res.simulated is None and "no JSON list" in res.error
    res = ApiJsonSimulator(ApiClient(ApiConfig(base_url=server, model="slow", timeout_s=0.5, max_retries=0))
                           ).simulate("x", RECS)
    assert res.simulated is None and "cannot reach" in res.error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens here
    with pytest.raises(UserError, match="cannot reach the API"):
        ApiExplainer(ApiClient(ApiConfig(base_url=dead, model="good", max_retries=0))).explain(RECS, 5.0)


def test_cli_records_a_failed_simulation(server, viewer_db, capsys):
    db, model = viewer_db
    args = ["--db", str(db), "--model", model, "--layer", "0", "--neuron", "1", "--api-base-url", server, "--api-retries", "0"]
    assert main(["score", *args, "--simulator", "api-json", "--api-model", "garbage", "--explanation", "Paris"]) == 1
    assert "simulation failed" in capsys.readouterr().err
    assert main(["score", *args, "--simulator", "api-json", "--api-model", "good", "--explanation", "Paris", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and out["simulator"] == "api-json"
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 0)
        sims = [x for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 0, 1)) for x in s.explanations.simulations(e.explanation_id)]
    assert any(x.error and "no JSON list" in x.error for x in sims) and any(x.error is None for x in sims)
    assert main(["explain", "--db", str(db), "--model", model, "--layer", "0", "--neurons", "1", "--explainer", "api"]) == 2
    assert "--api-base-url and --api-model" in capsys.readouterr().err


def test_cli_bounds_concurrent_requests(server, viewer_db, capsys):
    db, model = viewer_db
    args = ["explain", "--db", str(db), "--model", model, "--layer", "0", "--neurons", "20-31", "--explainer", "api",
            "--api-base-url", server, "--api-model", "busy", "--api-concurrency", "3", "--quiet"]
    t0 = time.monotonic()
    assert main(args) == 0
    assert "explained 12 neuron(s)" in capsys.readouterr().err
    assert IN_FLIGHT["max"] == 3  # parallel, and never more than asked
    assert time.monotonic() - t0 < 12 * 0.3  # faster than one at a time


def test_revision_stores_initial_and_revised(server, viewer_db, capsys):
    from cache.store import open_store

    db, model = viewer_db
    assert main(["explain", "--db", str(db), "--model", model, "--layer", "0", "--neurons", "40", "--explainer", "api",
                 "--api-base-url", server, "--api-model", "good", "--revise", "--quiet"]) == 0
    with open_store(db, read_only=True) as s:
        exps = s.explanations.of_unit(s.runs.find(model, 0).run_id, UnitId(MLP, 0, 40))
    by_kind = {e.params.get("revision"): e for e in exps}
    assert by_kind["initial"].text == "places in France, like Paris"
    assert by_kind["revised"].text == "places in France and their transport, like the Paris metro"
    assert by_kind["revised"].params["initial"] == "places in France, like Paris"


# --- api-all-at-once: completions with echo + logprobs, against real log-probabilities of the embedded model ---

def _records(tok, texts):
    out = []
    for i, t in enumerate(texts):
        ids = tok(t, add_special_tokens=False).input_ids
        toks = [tok.decode([x]) for x in ids]
        assert not any(x.isspace() for x in toks), toks  # a bare space after a newline joins it in the text prompt
        out.append(Rec(toks, ids, [0.0] * len(ids), window_id=i))
    return out


def test_api_all_at_once_equals_local_all_at_once(embedded_smollm2, tmp_path):
    """Through HTTP (text prompt, server-side tokenization, echoed top log-probabilities) == in-process (token ids,
    shared prefix cache, batches with padding, value rows of the unembedding only)."""
    from analysis.simulate import ApiAllAtOnceSimulator, LocalAllAtOnceSimulator, record_prompt

    recs = _records(embedded_smollm2.tokenizer, [
        "The farmer kept a dog, a cat and a horse.", "Hi", "Zürich café, naïve façade and Málaga — déjà vu.",
        "The old library near the river holds maps, letters and diaries from sailors who crossed the northern "
        "sea in winter, when the ice closed the harbour and the town waited for spring."])
    assert len(recs[3].tokens) > 30 and any(ord(c) > 127 for t in recs[2].tokens for c in t)
    local = LocalAllAtOnceSimulator(embedded_smollm2, batch_size=3).simulate("animals on a farm", recs)
    # records of another model: written by their token strings (here they retokenize to the same ids)
    foreign = [Rec(r.tokens, [0] * len(r.tokens), r.activations) for r in recs]
    other = LocalAllAtOnceSimulator(embedded_smollm2, record_model="another/model").simulate("animals on a farm", foreign)
    assert [len(x) for x in other.simulated] == [len(x) for x in local.simulated]
    # another batching (4 records in one batch against 3 + 1): float32 in another summation order
    for x, y in zip(other.simulated, local.simulated):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-5)
    with serve(embedded_smollm2) as url:
        from analysis.api import ReplyCache

        client = ApiClient(ApiConfig(base_url=url, model="smollm2", logprobs=300), ReplyCache(tmp_path / "replies"))
        res = ApiAllAtOnceSimulator(client).simulate("animals on a farm", recs)
        assert res.error is None and res.usage["requests"] == 4 and res.usage["prompt_tokens"] > 4 * 300
        # only the top 300 come back: at a slot where some value is not among them, the paper's method counts it
        # as probability 0 (the tiny model puts digits far down its list at a few slots); everywhere else the two
        # must agree
        complete = []
        for r, a, b in zip(recs, local.simulated, res.simulated):
            text, offsets = record_prompt("animals on a farm", r.tokens)
            reply = client.echo(text)  # the simulator's own reply, from the cache
            at = {o: i for i, o in enumerate(reply.offsets) if reply.tokens[i]}
            assert len(a) == len(b) == len(offsets)
            for x, y, o in zip(a, b, offsets):
                complete.append(all(str(v) in reply.top_logprobs[at[o]] for v in range(10)))
                if complete[-1]:
                    assert abs(x - y) <= 1e-4, (r.tokens, x, y)
        assert sum(complete) >= 0.85 * len(complete) and len(complete) - sum(complete) == res.params.get(
            "incomplete_slots", 0)
        assert client.spent.requests == 4 and client.spent.cached == 4
        # a small top leaves values out (probability 0 there, as in the paper): counted, not hidden
        few = ApiAllAtOnceSimulator(ApiClient(ApiConfig(base_url=url, model="smollm2", logprobs=5)))
        res = few.simulate("animals on a farm", recs[:1])
        assert res.error is None and res.params["incomplete_slots"] > 0
        # a server that echoes no prompt log-probabilities (llama.cpp, Ollama): a failed simulation saying so
        res = ApiAllAtOnceSimulator(ApiClient(ApiConfig(base_url=url, model="no-logprobs"))).simulate("x", recs[:1])
        assert res.simulated is None and "api-json" in res.error


def test_api_json_uses_the_json_schema_format_and_falls_back(server):
    recs = RECS
    res = ApiJsonSimulator(ApiClient(ApiConfig(base_url=server, model="schema", max_retries=0))).simulate("x", recs)
    assert res.error is None and res.params["reply_format"] == "json_schema"
    assert res.simulated == [[0.0, 10.0, 0.0], [0.0, 10.0]]
    HITS.pop(("chat", "noschema"), None)
    client = ApiClient(ApiConfig(base_url=server, model="noschema", max_retries=0))
    res = ApiJsonSimulator(client).simulate("x", recs)
    assert res.error is None and res.params["reply_format"] == "text" and res.simulated[1] == [0.0, 10.0]
    assert hits("noschema") == 1 + len(recs)  # refused once, then asked without the format
    assert res.usage["requests"] == 1 + len(recs) and res.usage["prompt_tokens"] > 0
    ApiJsonSimulator(client).simulate("y", recs)
    assert hits("noschema") == 1 + 2 * len(recs)  # this client does not ask with the format again


def test_reply_cache_makes_no_request(server, tmp_path):
    from analysis.api import ReplyCache

    cache = ReplyCache(tmp_path / "replies")
    first = ApiClient(ApiConfig(base_url=server, model="noschema", max_retries=0), cache)
    res = ApiJsonSimulator(first).simulate("cached", RECS)
    n = hits("noschema")
    again = ApiClient(ApiConfig(base_url=server, model="noschema", max_retries=0), cache)
    res2 = ApiJsonSimulator(again).simulate("cached", RECS)
    assert hits("noschema") == n  # the refusal of the schema format is remembered too
    assert res2.simulated == res.simulated and res2.usage == {"requests": 0, "cached": 3, "prompt_tokens": 0,
                                                              "completion_tokens": 0}
    assert again.spent.cached == 3 and again.spent.requests == 0
    off = ApiClient(ApiConfig(base_url=server, model="noschema", max_retries=0, reply_cache=False), cache)
    ApiJsonSimulator(off).simulate("cached", RECS)
    assert hits("noschema") == n + 3


def test_budgets_stop_cleanly_and_resume(server, viewer_db, capsys):
    from cache.store import open_store

    db, model = viewer_db
    args = ["explain", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "60-67", "--explainer", "api",
            "--api-base-url", server, "--api-model", "good", "--api-concurrency", "1", "--quiet"]
    n0 = hits("good")
    assert main([*args, "--api-max-requests", "3"]) == 3
    err = capsys.readouterr().err
    assert "plan: 8 neuron(s) × 1 call(s) = 8 request(s) to good" in err and "budget: 3 requests" in err
    assert "API budget reached" in err and "stopped with 5 left" in err and hits("good") - n0 == 3
    with open_store(db, read_only=True) as s:
        run = s.runs.find(model, 1)
        done = {u for u in range(60, 68) if s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u))}
        usage = [e.usage for u in done for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u))]
    assert len(done) == 3 and all(u["requests"] == 1 and u["prompt_tokens"] > 100 for u in usage)
    assert main(args) == 0  # the rest, nothing twice
    assert "explained 5 neuron(s)" in capsys.readouterr().err and hits("good") - n0 == 8
    # a token budget on the simulator: stops after the first request passes it (mid-explanation: nothing stored)
    score = ["score", "--db", str(db), "--model", model, "--layer", "1", "--neurons", "60-67", "--simulator",
             "api-json", "--api-base-url", server, "--api-model", "good", "--api-concurrency", "1", "--no-calibration"]
    n1 = hits("good")
    assert main([*score, "--api-max-tokens-total", "1"]) == 3
    err = capsys.readouterr().err
    assert "--api-max-tokens-total 1" in err and "stopped with 8 left" in err and hits("good") == n1 + 1
    assert main(score) == 0
    with open_store(db, read_only=True) as s:
        sims = [x for u in range(60, 68) for e in s.explanations.of_unit(run.run_id, UnitId(MLP, 1, u))
                for x in s.explanations.simulations(e.explanation_id)]
    assert len(sims) == 8 and all(x.error is None and x.usage["requests"] + x.usage["cached"] == 10 for x in sims)
    # what was sent is what the server saw (the stopped run's one request answered the rerun from the cache;
    # units sharing a window and the explanation share replies too)
    assert sum(x.usage["requests"] for x in sims) == hits("good") - n1 - 1
    assert all(x.params["model"] == "good" and x.params["reply_format"] == "json_schema" for x in sims)
    # a forced rerun is answered by the reply cache: no request
    n2 = hits("good")
    assert main([*score, "--force", "--quiet"]) == 0 and hits("good") == n2
    assert "0 request(s)" in capsys.readouterr().err


def test_cli_api_all_at_once_on_a_tiny_model(tiny_folders, viewer_db, capsys):
    """The CLI path end to end against a server whose model is a tiny random-weight one (fast): scores stored with
    the endpoint, usage and the calibrated fit; the JSON recomputes."""
    import scipy.stats

    from analysis.models import load_model

    db, model = viewer_db
    with serve(load_model(str(tiny_folders["llama"]))) as url:
        args = ["score", "--db", str(db), "--model", model, "--layer", "1", "--neuron", "5", "--simulator",
                "api-all-at-once", "--api-base-url", url, "--api-model", "tiny", "--explanation", "capital cities",
                "--json"]
        assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["error"] is None and out["simulator"] == "api-all-at-once" and out["simulator_params"]["logprobs"] == 20
    real = [v for r in out["records"] for v in r["real"]]
    sim = [v for r in out["records"] for v in r["simulated"]]
    assert out["score"] == pytest.approx(scipy.stats.pearsonr(real, sim).statistic, abs=1e-9)
    n_cal = len(out["calibration"]["records"])
    used = out["usage"]  # one request per record (a window in both sets is asked once)
    assert used["requests"] + used["cached"] == len(out["records"]) + n_cal and used["completion_tokens"] == used["requests"]
