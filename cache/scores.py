"""The Scores page's view of a model's explanation scores and baselines, aggregated in the database: what a box
plot per layer draws (quartiles, fences, the scores beyond them) and the per-unit summary, never every unit's
score once there are many."""

from __future__ import annotations

from dataclasses import dataclass

from analysis.types import UnitId
from cache.db import Repo

POINTS = 3000
"""A kind with at most this many scores gets every one (its boxes draw every point); more: boxes only."""


@dataclass(frozen=True)
class UnitScore:
    """A unit's score by one explainer and simulator (its best, in ``ScoreOverview.best``)."""

    unit: UnitId
    explainer: str
    simulator: str
    scoring_set: str
    score: float


@dataclass(frozen=True)
class ScoreBox:
    """The scores of one kind at one layer as a box."""

    layer: int
    n: int
    q1: float
    median: float
    q3: float
    """Quartiles, linearly interpolated (DuckDB's ``quantile_cont``)."""
    lowerfence: float
    upperfence: float
    """The lowest and highest scores within 1.5 interquartile ranges of the box (the whiskers' ends)."""
    outliers: list[tuple[UnitId, float]]
    """The scores beyond the fences, lowest first, with their units."""


@dataclass(frozen=True)
class ScoreTrace:
    """The scores of one kind: an explainer and a simulator, or a baseline predictor."""

    kind: tuple[str, str]
    """(explainer, simulator), or ('baseline', predictor)."""
    n: int
    points: list[tuple[UnitId, float]] | None
    """Every score with its unit when there are at most ``points`` of them (by layer, unit), else None."""
    boxes: list[ScoreBox]
    """One per layer when ``points`` is None (by layer), else empty."""


@dataclass(frozen=True)
class ScoreOverview:
    explained: list[ScoreTrace]
    """Successful scored simulations of text explanations, by kind."""
    baselines: list[ScoreTrace]
    n_units: int
    """Units with an explanation score."""
    both: int
    """Of those, units with a token-lookup baseline too."""
    beats: int
    """Of those, units whose best explanation score is above their token-lookup baseline."""
    best: list[UnitScore]
    """The best-explained units (their best score each), best first."""


@dataclass(frozen=True)
class ScorerMean:
    """One scorer's scores of one explainer's explanations (or of the units' baselines) over a model's units."""

    scorer: str
    """'simulation', 'baseline' (explanation-blind: not a score of an explanation), or a scorer of
    ``analysis.scorers.SCORERS`` (embedding, detection, fuzz, output)."""
    variant: str
    """The simulator (simulation), the predictor (baseline), else the scorer again."""
    metric: str
    """'correlation' (simulations, baselines), else the scorer's headline metric."""
    explainer: str
    n: int
    mean: float
    lo: float | None
    hi: float | None
    """mean ± 1.96 · sd / √n (a normal approximation, computed in SQL), clipped to the metric's range ([-1, 1] for
    correlations, [0, 1] for the others); None when n < 2."""


@dataclass(frozen=True)
class Disagreements:
    """Units whose scorers disagree about their best explanation (each side, input and output, on its own)."""

    judged: int
    """Units (sides) where two or more scorers (each simulator on each record set, each scorer's params) each
    scored two or more of the unit's explanations and have one best of them."""
    disagree: int
    """Of those, units where those scorers' best explanations are not all the same one."""
    examples: list[UnitId]
    """A few of them (by layer, unit)."""


_RUNS = "JOIN runs r USING (run_id) WHERE r.model_id = $model AND r.status = 'done'"
_EXP_RUNS = "JOIN explanations e USING (explanation_id) JOIN runs r ON r.run_id = e.run_id WHERE r.model_id = $model " \
            "AND r.status = 'done' AND e.source = $source"
_SIDE = "CASE WHEN e.explainer LIKE 'output-%' THEN 'output' ELSE 'input' END"
_SCORED = ("SELECT e.source, e.layer, e.unit, e.explainer AS a, s.simulator AS b, s.score FROM simulations s "
           f"JOIN explanations e USING (explanation_id) {_RUNS} AND s.error IS NULL AND s.score IS NOT NULL "
           "AND s.scoring_set = $set AND e.source = $source")
_BASE = (f"SELECT x.source, x.layer, x.unit, 'baseline' AS a, x.predictor AS b, x.score FROM baselines x {_RUNS} "
         "AND x.error IS NULL AND x.score IS NOT NULL AND x.scoring_set = $set AND x.source = $source")


class ScoreRepo(Repo):
    def kinds(self, model_id: str) -> tuple[list[str], list[str]]:
        """(scoring sets, unit sources) that a model's successful simulations and baselines (of finished runs)
        have, sorted; the sources of its successful scorer verdicts too (they have no scoring set)."""
        rows = self._q(
            "SELECT s.scoring_set, e.source FROM simulations s JOIN explanations e USING (explanation_id) "
            f"{_RUNS} AND s.error IS NULL UNION SELECT x.scoring_set, x.source FROM baselines x {_RUNS} AND "
            "x.error IS NULL AND x.score IS NOT NULL UNION SELECT NULL, e.source FROM scorer_results v JOIN "
            f"explanations e USING (explanation_id) {_RUNS} AND v.error IS NULL AND v.score IS NOT NULL",
            {"model": model_id}).fetchall()
        return sorted({r[0] for r in rows if r[0] is not None}), sorted({r[1] for r in rows})

    def by_scorer(self, model_id: str, scoring_set: str | None, source: str) -> list[ScorerMean]:
        """Every scorer's successful scores of a model's ``source`` units, per explainer: n, mean and the mean's
        95 % interval, all aggregated here; simulations and baselines on ``scoring_set`` only (None: none)."""
        args = {"model": model_id, "set": scoring_set, "source": source}
        rows = self._q(
            "WITH x AS ("
            "SELECT 'simulation' AS scorer, s.simulator AS variant, 'correlation' AS metric, e.explainer, s.score "
            f"FROM simulations s {_EXP_RUNS} AND s.error IS NULL AND s.score IS NOT NULL AND s.scoring_set = $set "
            "UNION ALL SELECT 'baseline', x.predictor, 'correlation', 'no explanation', x.score FROM baselines x "
            f"{_RUNS} AND x.error IS NULL AND x.score IS NOT NULL AND x.scoring_set = $set AND x.source = $source "
            "UNION ALL SELECT v.scorer, v.scorer, v.metric, e.explainer, v.score FROM scorer_results v "
            f"{_EXP_RUNS} AND v.error IS NULL AND v.score IS NOT NULL) "
            "SELECT *, CASE WHEN half IS NOT NULL THEN greatest(mean - half, CASE WHEN metric = 'correlation' "
            "THEN -1 ELSE 0 END) END, CASE WHEN half IS NOT NULL THEN least(mean + half, 1) END "
            "FROM (SELECT scorer, variant, metric, explainer, count(*) AS n, avg(score) AS mean, "
            "1.96 * stddev_samp(score) / sqrt(count(*)) AS half FROM x GROUP BY ALL) "
            "ORDER BY scorer, variant, metric, explainer", args).fetchall()
        return [ScorerMean(a, b, c, d, n, mean, lo, hi) for a, b, c, d, n, mean, _half, lo, hi in rows]

    def disagreements(self, model_id: str, source: str, examples: int = 10) -> Disagreements:
        """How many of a model's ``source`` units have scorers that disagree about their best explanation (see
        ``Disagreements``; the best of a scorer: its highest score, none when two tie at the top), counted here."""
        row = self._q(
            "WITH x AS ("
            f"SELECT e.run_id, e.layer, e.unit, {_SIDE} AS side, e.explanation_id AS eid, 'simulation' AS kind, "
            "s.simulator AS a, s.scoring_set AS b, s.params, s.score "
            f"FROM simulations s {_EXP_RUNS} AND s.error IS NULL AND s.score IS NOT NULL "
            f"UNION ALL SELECT e.run_id, e.layer, e.unit, {_SIDE}, e.explanation_id, 'scorer', v.scorer, '', "
            f"v.params, v.score FROM scorer_results v {_EXP_RUNS} AND v.error IS NULL AND v.score IS NOT NULL), "
            # a scorer's best of a unit's explanations: one (eid, scorer) row at most, so count(*) counts
            # explanations; the two highest scores tell a tie at the top (no best)
            "c AS (SELECT run_id, layer, unit, side, arg_max(eid, score) AS best FROM x "
            "GROUP BY run_id, layer, unit, side, kind, a, b, params "
            "HAVING count(*) >= 2 AND max(score, 2)[1] > max(score, 2)[2]), "
            "u AS (SELECT run_id, layer, unit, side, count(DISTINCT best) > 1 AS split FROM c "
            "GROUP BY ALL HAVING count(*) >= 2) "
            "SELECT count(*), count(*) FILTER (split), "
            "(list({'layer': layer, 'unit': unit} ORDER BY layer, unit) FILTER (split))[1:$k] FROM u",
            {"model": model_id, "source": source, "k": examples}).fetchone()
        seen = dict.fromkeys(UnitId(source, r["layer"], r["unit"]) for r in row[2] or [])
        return Disagreements(row[0], row[1], list(seen))

    def overview(self, model_id: str, scoring_set: str, source: str, points: int = POINTS) -> ScoreOverview:
        """A model's explanation scores and baselines on one record set, of one source's units."""
        args = {"model": model_id, "set": scoring_set, "source": source}
        summary = self._q(
            f"WITH x AS ({_SCORED}), "
            f"base AS (SELECT source, layer, unit, max(score) AS score FROM ({_BASE}) WHERE b = 'token-lookup' "
            "GROUP BY ALL), "
            "best AS (SELECT source, layer, unit, arg_max({'a': a, 'b': b}, score) AS ab, max(score) AS score "
            "FROM x GROUP BY ALL) "
            "SELECT count(*), count(base.score), count(*) FILTER (best.score > base.score), "
            "max_by({'source': source, 'layer': layer, 'unit': unit, 'a': ab.a, 'b': ab.b, 'score': best.score}, "
            "best.score, 10) FROM best LEFT JOIN base USING (source, layer, unit)", args).fetchone()
        best = [UnitScore(UnitId(r["source"], r["layer"], r["unit"]), r["a"], r["b"], scoring_set, r["score"])
                for r in summary[3] or []]
        return ScoreOverview(self._traces(_SCORED, args, points), self._traces(_BASE, args, points), *summary[:3],
                             best)

    def _traces(self, select: str, args: dict, points: int) -> list[ScoreTrace]:
        counts = self._q(f"SELECT a, b, count(*) FROM ({select}) GROUP BY a, b ORDER BY a, b", args).fetchall()
        few = [[a, b] for a, b, n in counts if n <= points]
        many = [[a, b] for a, b, n in counts if n > points]
        every: dict[tuple, list] = {}
        if few:
            for a, b, src, layer, unit, score in self._q(
                    f"SELECT a, b, source, layer, unit, score FROM ({select}) WHERE [a, b] IN "
                    "(SELECT unnest($kinds::VARCHAR[][])) ORDER BY a, b, layer, unit",
                    {**args, "kinds": few}).fetchall():
                every.setdefault((a, b), []).append((UnitId(src, layer, unit), score))
        boxes: dict[tuple, list] = {}
        if many:
            for a, b, layer, n, q, lo, hi, out in self._q(
                    f"WITH x AS MATERIALIZED (SELECT * FROM ({select}) WHERE [a, b] IN "
                    "(SELECT unnest($kinds::VARCHAR[][]))), "
                    "q AS (SELECT a, b, layer, count(*) AS n, quantile_cont(score, [0.25, 0.5, 0.75]) AS q FROM x "
                    "GROUP BY a, b, layer), "
                    "w AS (SELECT *, q[1] - 1.5 * (q[3] - q[1]) AS lo, q[3] + 1.5 * (q[3] - q[1]) AS hi FROM q) "
                    "SELECT a, b, layer, any_value(n), any_value(q), min(score) FILTER (score >= lo), "
                    "max(score) FILTER (score <= hi), list({'source': source, 'unit': unit, 'score': score} "
                    "ORDER BY score, source, unit) FILTER (score < lo OR score > hi) FROM x JOIN w USING (a, b, layer) "
                    "GROUP BY a, b, layer ORDER BY a, b, layer", {**args, "kinds": many}).fetchall():
                outliers = [(UnitId(o["source"], layer, o["unit"]), o["score"]) for o in out or []]
                boxes.setdefault((a, b), []).append(ScoreBox(layer, n, *q, lo, hi, outliers))
        return [ScoreTrace((a, b), n, every.get((a, b)), boxes.get((a, b), [])) for a, b, n in counts]
