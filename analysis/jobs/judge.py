"""Job part: the scorers beside simulation (analysis.scorers) over a layer's stored explanations, resumable; each
verdict stored with its interval in ``scorer_results``."""

from __future__ import annotations

from pathlib import Path

from analysis.progress import Progress
from analysis.scorers import API_SCORERS, reads


def _todo(store, recs: dict, units: list[int], scorer: str, params: dict, force: bool,
          only: list[str] | None) -> tuple[list, list]:
    """(to score: (unit index, explanation id, text), already scored: the same) of the units' explanations that
    ``scorer`` reads (``analysis.scorers.reads``); ``only``: just these explanation ids."""
    if not units:
        return [], []
    run_id, source, layer = recs[units[0]].run_id, recs[units[0]].unit.source, recs[units[0]].unit.layer
    stored = store.explanations.of_units(run_id, source, layer, units)
    items = [(u, e.explanation_id, e.text) for u in units for e in stored[u]
             if reads(scorer, e.explainer) and (only is None or e.explanation_id in only)]
    done = set() if force else store.scorer_results.done([i[1] for i in items], scorer, params)
    return [i for i in items if i[1] not in done], [i for i in items if i[1] in done]


def window_vectors(db: Path, recs: list, progress: Progress = Progress()) -> dict:
    """window id -> sentence vector of every classification example of these units (one run), the stored ones read
    and the missing ones encoded once and stored (``analysis.scorers.embedding``)."""
    from analysis.scorers.embedding import examples_of, window_text
    from analysis.search import ENCODER, embed
    from cache.store import open_store

    if not recs:
        return {}
    texts = {r.window_id: window_text(r) for rec in recs for r, _y in examples_of(rec)}
    run_id = recs[0].run_id
    with open_store(db, read_only=True) as store:
        have = store.scorer_results.window_vectors(run_id, ENCODER, list(texts))
    missing = sorted(set(texts) - set(have))
    if missing:
        progress.note(f"embedding: encoding {len(missing):,} example windows (once; stored for every unit)")
        order = sorted(missing, key=lambda w: len(texts[w]))  # similar lengths batch with less padding
        vectors = embed([texts[w] for w in order])
        with open_store(db) as store:
            store.scorer_results.put_window_vectors(run_id, ENCODER, order, vectors)
        have.update(zip(order, vectors))
    return have


def explanation_vectors(db: Path, items: list) -> dict:
    """explanation id -> sentence vector of these (unit, id, text) items, read or encoded and stored (the vectors
    search by meaning uses)."""
    from analysis.search import ENCODER, embed
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        have = store.explanations.vectors_of(ENCODER, [i for _u, i, _t in items])
    missing = [(i, t) for _u, i, t in items if i not in have and t.strip()]
    missing = list(dict(missing).items())
    if missing:
        vectors = embed([t for _i, t in missing])
        with open_store(db) as store:
            store.explanations.put_vectors(ENCODER, [i for i, _t in missing], vectors)
        have.update({i: v for (i, _t), v in zip(missing, vectors)})
    return have


def judge(job, scorer: str, db: Path, recs: dict, units: list[int], progress: Progress = Progress(),
          only: list[str] | None = None, subject=None, sae=None):
    """Score the units' explanations with ``scorer`` (not simulation); returns an ``analysis.jobs.score.ScoreSummary``
    whose results are ``analysis.scorers.ScorerResult`` and whose ``printed`` holds them and the verdicts stored
    before (``"stored": true``), as ``score --json`` prints them."""
    from analysis.jobs.fanout import Tally, fan_out, settled
    from analysis.jobs.score import ScoreSummary
    from analysis.jobs.writes import batched_writes
    from cache.store import open_store

    client, judge_ = None, None
    if scorer in API_SCORERS:
        from analysis.api import ApiClient, ReplyCache
        from analysis.scorers.detection import JudgeScorer

        client = ApiClient(job.api, ReplyCache.beside(db))
        judge_ = JudgeScorer(scorer, client)
        params = judge_.params
    elif scorer == "embedding":
        from analysis.scorers.embedding import PARAMS as params
    else:
        from analysis.scorers.output import params_of

        params = params_of(job)
    with open_store(db, read_only=True) as store:
        todo, done = _todo(store, recs, units, scorer, params, job.force, only)
        kept = store.scorer_results.of_explanations([e for _u, e, _t in done], examples=True)
    stored = [dict(s.to_json(), unit=str(recs[u].unit), explanation_id=e, explanation=t, stored=True)
              for u, e, t in done for s in kept.get(e, []) if s.scorer == scorer and s.params == params]
    results, printed, tally = [], [], Tally()
    bar = progress.bar(len(todo), f"score L{job.layer} ({scorer})", unit="explanation")

    def outcomes():  # (item, ScorerResult or None, error or None)
        if scorer == "embedding":
            from analysis.scorers.embedding import score_embedding

            windows = window_vectors(db, [recs[u] for u in {u for u, _i, _t in todo}], progress)
            texts = explanation_vectors(db, todo)
            for u, i, t in todo:
                yield (u, i, t), score_embedding(t, texts.get(i, []), recs[u], windows), None
        elif client is not None:
            from analysis.api import plan_line

            progress.note(plan_line(len(todo), "explanation", [c for u, _i, t in todo
                                                                 for c in judge_.cost(t, recs[u])], job.api))
            yield from fan_out(lambda it: judge_.score(it[2], recs[it[0]]), todo, job.api_concurrency)
        else:
            from analysis.scorers.output import score_output

            for item, result in zip(todo, score_output(job, db, [(recs[u], t) for u, _i, t in todo], progress,
                                                       subject=subject, sae=sae)):
                yield item, result, None

    def put(store, items) -> None:
        store.scorer_results.put(items)

    with batched_writes(db, put) as add:
        for (u, eid, text), result in settled(outcomes(), tally, bar, progress, key=lambda it: it[0]):
            add((eid, result))
            results.append(result)
            printed.append(dict(result.to_json(), unit=str(recs[u].unit), explanation_id=eid, explanation=text))
            if result.error:
                progress.note(f"unit {u}: {scorer}: {result.error}")
    bar.close()
    return ScoreSummary(results, len(todo), tally.failed, tally.stopped, tally.left,
                        client.spent if client is not None else None,
                        printed=printed + stored)
