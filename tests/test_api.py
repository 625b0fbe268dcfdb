"""API explainer and simulator: the real openai client against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from analysis.__main__ import main
from analysis.explain import ApiConfig, ApiExplainer
from analysis.simulate import ApiJsonSimulator
from analysis.types import UserError
from test_explanations import Rec

HITS: dict[str, int] = {}
IN_FLIGHT = {"now": 0, "max": 0}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    """Speaks POST /v1/chat/completions. The requested model name picks a behaviour."""

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: dict | str, headers: dict | None = None):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        model = req["model"]
        HITS[model] = HITS.get(model, 0) + 1
        if model == "flaky" and HITS[model] <= 2:
            return self._send(500, {"error": {"message": "upstream broke"}})
        if model == "ratelimit" and HITS[model] == 1:
            return self._send(429, {"error": {"message": "slow down"}}, {"retry-after-ms": "10"})
        if model == "slow":
            time.sleep(3)
        if model == "busy":
            with LOCK:
                IN_FLIGHT["now"] += 1
                IN_FLIGHT["max"] = max(IN_FLIGHT["max"], IN_FLIGHT["now"])
            time.sleep(0.3)
            with LOCK:
                IN_FLIGHT["now"] -= 1
        user = req["messages"][-1]["content"]
        if model == "garbage":
            content = "I think the activations are mostly high, roughly"
        elif "Revised explanation" in user:
            content = " places in France and their transport, like the Paris metro."
        elif "JSON list" in user:  # a simulation request: fire on tokens containing 'Paris'
            tokens = re.findall(r"^\d+\t(.*)$", user, re.M)
            content = "Here you go: " + json.dumps([10 if "Paris" in t else 0 for t in tokens])
        else:
            content = " places in France, like Paris. They also appear in lists."
        self._send(200, {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": content}}],
                         "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


RECS = [Rec([" The", " Paris", " metro"], [1, 2, 3], [0.0, 5.0, 0.5]), Rec([" In", " Paris"], [4, 2], [0.0, 4.0])]


def test_explainer_and_simulator_over_http(server):
    cfg = ApiConfig(base_url=server, model="good", max_retries=0)
    exp = ApiExplainer(cfg).explain(RECS, 5.0)
    assert exp.text == "places in France, like Paris" and exp.params["model"] == "good"
    res = ApiJsonSimulator(cfg).simulate(exp.text, RECS)
    assert res.error is None and res.simulated == [[0.0, 10.0, 0.0], [0.0, 10.0]]


def test_server_errors_are_retried_with_backoff(server):
    for model in ("flaky", "ratelimit"):
        HITS.pop(model, None)
        res = ApiJsonSimulator(ApiConfig(base_url=server, model=model, max_retries=3)).simulate("x", RECS[:1])
        assert res.error is None, res.error
    assert HITS["flaky"] == 3 and HITS["ratelimit"] == 2


def test_failures_are_recorded_not_raised(server):
    res = ApiJsonSimulator(ApiConfig(base_url=server, model="garbage", max_retries=0)).simulate("x", RECS)
    assert res.simulated is None and "no JSON list" in res.error
    res = ApiJsonSimulator(ApiConfig(base_url=server, model="slow", timeout_s=0.5, max_retries=0)).simulate("x", RECS)
    assert res.simulated is None and "cannot reach" in res.error
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/v1"  # nothing listens here
    with pytest.raises(UserError, match="cannot reach the API"):
        ApiExplainer(ApiConfig(base_url=dead, model="good", max_retries=0)).explain(RECS, 5.0)


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
