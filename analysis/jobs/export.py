"""Job: one unit's record as JSON: OpenAI's NeuronRecord field names plus our extras, or strictly their format."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from analysis.config import DEFAULT_MODEL
from analysis.jobs.reads import unit_record
from analysis.types import MLP, UnitId, UnitRecord, UserError

FORMATS = ("ours", "openai")


@dataclass(frozen=True)
class ExportJob:
    layer: int
    """Layer."""
    neuron: int
    """Neuron."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    source: str = MLP
    """The units' source: mlp (MLP neurons) or a dictionary (its id; on the command line also its name or folder)."""
    run: str | None = None
    """A run id (default: the newest finished run with this layer)."""
    format: str = "ours"
    """ours: OpenAI's field names plus our extras (record_json); openai: exactly their dataclasses' fields
    (openai_record_json)."""


def record_json(rec: UnitRecord) -> dict:
    """OpenAI NeuronRecord field names, plus our extras."""

    def ar(r):
        return {"tokens": r.tokens, "activations": [round(a, 5) for a in r.activations], "token_ids": r.token_ids,
                "window_id": r.window_id, "doc_id": r.doc_id, "offset": r.offset,
                **({"runs": [list(x) for x in r.runs]} if r.runs else {})}

    st = rec.stats
    return {
        "neuron_id": {"layer_index": rec.unit.layer, "neuron_index": rec.unit.index},
        **({} if rec.unit.source == MLP else {"source": rec.unit.source}),  # neurons' exports as before units
        "most_positive_activation_records": [ar(r) for r in rec.most_positive_activation_records],
        "random_sample": [ar(r) for r in rec.random_sample],
        "random_sample_by_quantile": [[ar(r) for r in b] for b in rec.random_sample_by_quantile],
        "quantile_boundaries": rec.quantile_boundaries,
        "mean": st.mean, "variance": st.std ** 2, "stddev": st.std, "skewness": st.skewness, "kurtosis": st.kurtosis,
        "max_activation": st.max, "min_activation": st.min, "frac_active": st.frac_active, "n_tokens": st.n_tokens,
        "histogram": {"counts": st.hist_counts, "bin_edges": st.hist_edges,
                      "note": "log-scale bins by magnitude (float16 high byte); each bin's two edges, the first nearer 0"},
        "top_tokens": [{"token_id": t, "token": s, "mean_activation": m, "count": c} for t, s, m, c in rec.top_tokens],
        "model_id": rec.model_id, "corpus_id": rec.corpus_id, "run_id": rec.run_id, "hook_point": rec.hook_point,
    }


def openai_record_json(rec: UnitRecord) -> dict:
    """Exactly the fields of OpenAI's neuron_explainer NeuronRecord, ActivationRecord and NeuronId, each object
    tagged with its ``dataclass_name``, so ``neuron_explainer.fast_dataclasses.loads`` builds their dataclasses
    (a feature's source has no field there: only its layer and index are kept)."""

    def ar(r):
        return {"dataclass_name": "ActivationRecord", "tokens": r.tokens,
                "activations": [round(a, 5) for a in r.activations]}

    st = rec.stats
    return {
        "dataclass_name": "NeuronRecord",
        "neuron_id": {"dataclass_name": "NeuronId", "layer_index": rec.unit.layer, "neuron_index": rec.unit.index},
        "random_sample": [ar(r) for r in rec.random_sample],
        "random_sample_by_quantile": [[ar(r) for r in b] for b in rec.random_sample_by_quantile],
        "quantile_boundaries": rec.quantile_boundaries,
        "mean": st.mean, "variance": st.std ** 2, "skewness": st.skewness, "kurtosis": st.kurtosis,
        "most_positive_activation_records": [ar(r) for r in rec.most_positive_activation_records],
    }


def export(job: ExportJob, db: Path) -> dict:
    from cache.store import open_store

    if job.format not in FORMATS:
        raise UserError(f"unknown export format {job.format!r}: use one of {', '.join(FORMATS)}")
    with open_store(db, read_only=True) as store:
        rec = unit_record(store, job.model, UnitId(job.source, job.layer, job.neuron), job.run)
    return (openai_record_json if job.format == "openai" else record_json)(rec)
