"""Job part: output-side explanations, what a unit promotes and suppresses (``explain --explainer output-weights``
or ``output-effects``), stored as explanations.

- ``output-weights``: the unit's output direction (a neuron's row of the MLP output projection, a feature's decoder
  row) times the final norm's gain (no centring), through the unembedding (``analysis.weights``' convention):
  its ``K`` highest tokens promoted, its ``K`` lowest suppressed. One matrix product per chunk of units.
- ``output-effects``: the tokens its stored ablation effects (``effects``) say it raises / lowers most; units
  without stored effects are skipped, with a note.

Text: ``promotes ' Paris', ' France'; suppresses ' the', ' a'`` (token strings as the cache's vocabulary reads them,
repr-quoted, so the output scorer reads them back exactly).
"""

from __future__ import annotations

import functools
from pathlib import Path

from analysis.progress import Progress
from analysis.types import MLP, Explanation, UnitId, UserError

OUTPUT_EXPLAINERS = ("output-weights", "output-effects")
K = 5
"""Tokens named each way."""
PARAMS = {"side": "output", "k": K}
CHUNK = 256
"""Units per matrix product."""


def output_text(promoted: list[str], suppressed: list[str]) -> str:
    return f"promotes {', '.join(map(repr, promoted))}; suppresses {', '.join(map(repr, suppressed))}"


@functools.lru_cache(maxsize=1)
def _subject(name: str, model_id: str, device: str):
    """The subject model, loaded once per process (the build asks layer after layer)."""
    from analysis.models import load_subject

    return load_subject(name, model_id, device)


def weight_tokens(subject, layer: int, units: list[int], sae=None, k: int = K) -> dict[int, tuple[list, list]]:
    """unit -> (its ``k`` most promoted token ids, its ``k`` most suppressed) by its output direction through the
    final norm's gain and the unembedding, a chunk of units per product."""
    import torch

    with torch.no_grad():
        unemb = subject.model.get_output_embeddings().weight.detach().float()  # [V, d]
        n_vocab = min(unemb.shape[0], len(subject.tokenizer))  # rows past the tokenizer name no token
        unemb = unemb[:n_vocab]
        gain = subject.final_norm_gain().detach().float()
        rows = subject.w_out(layer) if sae is None else sae.W_dec
        out = {}
        for b in range(0, len(units), CHUNK):
            chunk = units[b:b + CHUNK]
            write = rows[torch.tensor(chunk, device=rows.device)].detach().float().to(unemb.device)  # [c, d]
            scores = (write * gain) @ unemb.T  # [c, V]
            kk = min(k, n_vocab)
            top, low = scores.topk(kk, dim=-1).indices.tolist(), scores.topk(kk, dim=-1, largest=False).indices.tolist()
            out.update({u: (t, lo) for u, t, lo in zip(chunk, top, low)})
    return out


def explain_output(job, db: Path, progress: Progress = Progress(), records: dict | None = None):
    """Store output-side explanations of the job's units (``analysis.jobs.explain.ExplainJob`` with an explainer of
    ``OUTPUT_EXPLAINERS``; resumable); returns an ``ExplainSummary``."""
    from analysis.jobs.explain import ExplainSummary
    from analysis.jobs.reads import _run_of, cached_model, load_dictionary_of, n_units
    from analysis.jobs.specs import parse_units
    from cache.store import open_store

    if job.explainer not in OUTPUT_EXPLAINERS:
        raise UserError(f"{job.explainer!r} is not an output explainer ({', '.join(OUTPUT_EXPLAINERS)})")
    if job.revise:
        raise UserError("--revise needs a model explainer (local or api)")
    if job.examples != "top":
        raise UserError(f"--examples does not apply to {job.explainer}: it reads no records")
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        n = n_units(store, info, job.source, job.layer)
        units = parse_units(job.neurons, n, "neurons" if job.source == MLP else "features", allow_all=True)
        run_id = (records[units[0]].run_id if records and units[0] in records
                  else _run_of(store, job.model, UnitId(job.source, job.layer, units[0])).run_id)
        done = set() if job.force else store.explanations.units_explained_by(run_id, job.source, job.layer,
                                                                             job.explainer)
        todo = [u for u in units if u not in done]
        tokens: dict[int, tuple[list, list]] = {}
        if job.explainer == "output-effects":
            for u in todo:
                e = store.effects.get(run_id, UnitId(job.source, job.layer, u))
                if e is not None:
                    tokens[u] = ([t for t, _v in e.promoted[:K]], [t for t, _v in e.suppressed[:K]])
            sae = None
        else:
            sae = load_dictionary_of(store, job.source) if todo else None
    if job.explainer == "output-weights" and todo:
        subject = _subject(info.name, info.model_id, job.device)
        tokens = weight_tokens(subject, job.layer, todo, sae.to(subject.device) if sae is not None else None)
    skipped_effects = [u for u in todo if u not in tokens]
    if skipped_effects:
        progress.note(f"output-effects: {len(skipped_effects)} unit(s) have no stored ablation effects and were "
                      f"skipped (measure them first: python -m analysis effects --layer {job.layer} ...)")
    with open_store(db, read_only=True) as store:
        vocab = store.catalog.vocab(info.tokenizer_id, sorted({t for a, b in tokens.values() for t in a + b}))
    name = lambda t: vocab.get(t, f"<{t}>")  # noqa: E731
    explained = {u: (Explanation(output_text([name(t) for t in a], [name(t) for t in b]), job.explainer,
                                 dict(PARAMS)),) for u, (a, b) in sorted(tokens.items())}
    bar = progress.bar(len(explained), f"explain L{job.layer} ({job.explainer})", unit="neuron")
    with open_store(db) as store:
        store.explanations.put_many([(run_id, UnitId(job.source, job.layer, u), e[0]) for u, e in explained.items()])
    bar.update(len(explained))
    bar.close()
    return ExplainSummary(explained, len(units) - len(todo), {})
