"""API explainer and simulator: the real openai client against a small OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

from analysis.types import MLP, UnitId

import json
import socket
import time

import pytest

from analysis.__main__ import main
from analysis.api import ApiClient, ApiConfig
from analysis.explain import ApiExplainer
from analysis.simulate import ApiJsonSimulator
from analysis.types import UserError
from openai_server import HITS, IN_FLIGHT, hits, serve
from test_explanations import Rec

@pytest.fixture(scope="module")
def server():
    with serve() as url:
        yield url


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
