"""The Scores page's overview, aggregated in the database (cache/scores.py), against the same numbers computed in
Python from every stored score."""

from __future__ import annotations

import random

import numpy as np
import pytest

from analysis.evaluate import ScoredSimulation
from analysis.types import MLP, Explanation, UnitId
from cache.store import open_store


def scored(who: str, score: float | None, error: str | None = None, scoring_set: str = "top-and-random"):
    return ScoredSimulation("", who, {}, scoring_set, [], [], [], None, score, None, None, 1.0, error)


@pytest.fixture(scope="module")
def planted(viewer_db, tmp_path_factory):
    """viewer_db's harvest, made afresh (other tests add explanations to viewer_db), with an explanation, a
    simulation and a baseline per unit of layers 0-1, seeded scores (a few far out, a failed simulation, a second
    explainer on a few units): (db, model id, every planted score)."""
    from analysis.__main__ import main

    db, model = viewer_db
    copy = tmp_path_factory.mktemp("scores") / "scores.duckdb"
    assert main(["harvest", "--model", model, "--corpus", str(db.parent / "docs.jsonl"), "--db", str(copy),
                 "--layers", "0,1", "--seq-len", "24", "--quiet"]) == 0
    rng = random.Random(3)
    rows, base = [], {}
    with open_store(copy) as s:
        m = s.catalog.models()[0]
        run = s.runs.find(m.model_id, 0)
        units = [UnitId(MLP, layer, u) for layer in run.layers for u in range(m.d_mlp)]
        ids = s.explanations.put_many([(run.run_id, u, Explanation(f"text {u}", "a")) for u in units])
        scores = [rng.gauss(0.3, 0.1) if rng.random() > 0.05 else rng.choice([-0.9, 0.99]) for _ in units]
        s.explanations.put_simulations([(i, scored("sim", v)) for i, v in zip(ids, scores)])
        s.explanations.put_simulation(ids[0], scored("failed", None, "no reply"))
        s.explanations.put_simulation(ids[1], scored("sim", 0.5, scoring_set="random-only"))
        rows += [(u, "a", "sim", v) for u, v in zip(units, scores)]
        few = s.explanations.put_many([(run.run_id, u, Explanation(f"other {u}", "b")) for u in units[:7]])
        for i, u in zip(few, units[:7]):
            v = rng.uniform(0, 1)
            s.explanations.put_simulation(i, scored("sim", v))
            rows.append((u, "b", "sim", v))
        base = {u: rng.gauss(0.3, 0.1) for u in units[::2]}
        s.explanations.put_baselines([(run.run_id, u, scored("token-lookup", v)) for u, v in base.items()])
    return copy, m.model_id, rows, base


def test_overview_matches_every_score_summed_up_in_python(planted):
    db, model_id, rows, base = planted
    with open_store(db, read_only=True) as s:
        assert s.scores.kinds(model_id) == (["random-only", "top-and-random"], [MLP])
        ov = s.scores.overview(model_id, "top-and-random", MLP, points=50)
        every = s.scores.overview(model_id, "top-and-random", MLP, points=10**6)
    [a, b] = ov.explained
    assert (a.kind, a.n, a.points) == (("a", "sim"), len(rows) - 7, None) and b.kind == ("b", "sim")
    assert sorted(b.points, key=lambda p: p[1]) == sorted(((u, v) for u, e, _s, v in rows if e == "b"),
                                                          key=lambda p: p[1])  # 7 points: every one
    for box in a.boxes:
        vals = np.array([v for u, e, _s, v in rows if e == "a" and u.layer == box.layer])
        q1, med, q3 = np.quantile(vals, [0.25, 0.5, 0.75])  # numpy's default: linear, as DuckDB's quantile_cont
        lo, hi = q1 - 1.5 * (q3 - q1), q3 + 1.5 * (q3 - q1)
        assert box.n == len(vals) and np.allclose([box.q1, box.median, box.q3], [q1, med, q3])
        assert box.lowerfence == vals[vals >= lo].min() and box.upperfence == vals[vals <= hi].max()
        assert sorted(v for _u, v in box.outliers) == sorted(vals[(vals < lo) | (vals > hi)].tolist())
        assert box.outliers and all(u.layer == box.layer for u, _v in box.outliers)
    assert sorted(v for _u, v in every.explained[0].points) == sorted(v for _u, e, _s, v in rows if e == "a")
    [bt], [every_bt] = ov.baselines, every.baselines
    assert bt.kind == ("baseline", "token-lookup") and bt.n == len(base) and bt.points is None
    assert sum(box.n for box in bt.boxes) == len(base)
    assert sorted(v for _u, v in every_bt.points) == sorted(base.values())
    best: dict = {}
    for u, e, sim, v in rows:
        if u not in best or v > best[u][2]:
            best[u] = (e, sim, v)
    assert ov.n_units == len(best) and ov.both == sum(u in base for u in best)
    assert ov.beats == sum(u in base and v > base[u] for u, (_e, _s, v) in best.items())
    top = sorted((v for _e, _s, v in best.values()), reverse=True)[:10]
    assert [r.score for r in ov.best] == top  # the best-explained units (any order among equal scores)
    assert all(best[r.unit][:2] == (r.explainer, r.simulator) and best[r.unit][2] == r.score for r in ov.best)
