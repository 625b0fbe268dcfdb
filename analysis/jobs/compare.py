"""Job: which kind of unit is more interpretable? MLP neurons vs SAE features vs transcoder features (optional) vs
the residual stream's own basis vs random residual directions, at one layer over one corpus (after Cunningham et
al. 2023).

For a seeded random sample of equal size per kind (among units that fire at all: a dead feature has nothing to
explain, and is counted in the dictionary's dead fraction instead), the job runs the lenses every kind can take
and stores their results like any other (so the unit pages show them):
- token-lookup correlation score: the unit's token-lookup baseline on the held-out scoring set (how far token
  identity alone predicts the unit);
- Neuron2Graph held-out firing F1, and its margin over token-lookup's F1 (optional: the costly lens);
- the best word-pool topic's NPMI (activation mode, positive end) against random word sets from the same pool;
- activation density (fraction of tokens with activation > 0).
``kind_table`` reads the per-unit numbers back from the cache: the CLI prints it, the Interpretability page
plots it.
"""

from __future__ import annotations

import zlib
from statistics import median
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from analysis.config import DEFAULT_CORPUS, DEFAULT_MODEL, HarvestConfig
from analysis.progress import Progress
from analysis.topics.types import NpmiConfig
from analysis.types import MLP, UnitId, UserError

KINDS = ("neurons", "sae", "transcoder", "basis", "random")
"""MLP neurons, SAE features, transcoder features, residual basis dimensions, random residual directions."""
LENSES = ("token-lookup", "topics", "n2g")
TOKEN_LOOKUP = "token-lookup"
TOPIC_MODE = "activation"


@dataclass(frozen=True)
class CompareJob:
    layer: int
    """Layer."""
    sae: str
    """The SAE (folder or hub id, ``DIR[#layer=L,site=S]``) whose features are compared; it must read ``layer``."""
    transcoder: str | None = None
    """A transcoder (folder or hub id) of ``layer``'s MLP whose features are compared too (a fourth kind)."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    corpus: str = DEFAULT_CORPUS
    """Embedded name or a text/JSONL/parquet path."""
    units: int = 100
    """Units sampled per kind."""
    n2g_units: int = 25
    """Of those, how many get a Neuron2Graph graph (about 2.5 s each on a CPU); 0 skips the lens."""
    lenses: tuple[str, ...] = LENSES
    """Some of token-lookup, topics, n2g."""
    max_tokens: int | None = None
    """The harvest's token budget (as ``harvest --max-tokens``): use the neurons' own run's, to reuse it."""
    seed: int = 0
    """Seed of the samples of units (the random directions are seeded by the harvest seed)"""
    device: str = "cpu"
    """Cpu or cuda."""
    config: HarvestConfig = field(default_factory=HarvestConfig)
    npmi: NpmiConfig = field(default_factory=NpmiConfig)
    """The topics lens' NPMI reference (never the harvest's corpus: the activation pool comes from it)."""


@dataclass(frozen=True)
class UnitMetrics:
    kind: str
    unit: UnitId
    density: float
    token_lookup: float | None
    n2g_f1: float | None
    n2g_baseline_f1: float | None
    topic_npmi: float | None
    random_npmi: float | None
    """Median NPMI of random word sets from the same pool."""

    @property
    def n2g_margin(self) -> float | None:
        return None if self.n2g_f1 is None or self.n2g_baseline_f1 is None else self.n2g_f1 - self.n2g_baseline_f1


@dataclass(frozen=True)
class KindSummary:
    kind: str
    source: str
    n_units: int
    """Units of this kind at the layer."""
    n_live: int
    """Of which fire at all (max activation > 0)."""
    metrics: list[UnitMetrics]

    def med(self, name: str) -> float | None:
        vals = [v for m in self.metrics if (v := getattr(m, name)) is not None and np.isfinite(v)]
        return median(vals) if vals else None

    def count(self, name: str) -> int:
        return sum(getattr(m, name) is not None for m in self.metrics)


def sample_units(live: list[int], n: int, seed: int, kind: str) -> list[int]:
    """A seeded random sample of ``n`` of the ``live`` units (all of them if fewer), sorted; each kind draws from
    its own stream."""
    rng = np.random.default_rng([seed, zlib.crc32(kind.encode())])
    live = sorted(live)
    pick = rng.choice(len(live), size=min(n, len(live)), replace=False) if live else []
    return sorted(live[i] for i in pick)


def _sources(store, model_id: str, layer: int, sae_source: str, transcoder: str | None = None) -> dict[str, str]:
    """kind -> source id at this layer (the baselines at the SAE's site)."""
    sae = store.catalog.dictionary(sae_source)
    out = {"neurons": MLP, "sae": sae_source}
    if transcoder:
        out["transcoder"] = transcoder
    for d in store.catalog.dictionaries(model_id):
        if d.format == "baseline" and d.layer == layer and d.site == sae.site and d.kind in KINDS:
            out[d.kind] = d.source
    return out


def kind_table(store, model: str, layer: int, sae_source: str, units: int, seed: int,
               transcoder: str | None = None) -> list[KindSummary]:
    """Per kind, the sampled units' numbers as the cache holds them (None where a lens has not run); ``transcoder``:
    a transcoder's source id, the fourth kind."""
    info = store.catalog.model(model)
    out = []
    for kind, source in _sources(store, info.model_id, layer, sae_source, transcoder).items():
        run = store.runs.find(model, layer, source=source)
        if run is None:
            continue
        summaries = {s.unit.index: s for s in store.records.units_by(run.run_id, layer, "max", limit=1 << 30,
                                                                    source=source)}
        live = [i for i, s in summaries.items() if s.max > 0]
        picked = sample_units(live, units, seed, kind)
        scores = {b.unit.index: b.score for b in store.explanations.baseline_scores(run.run_id)
                  if b.unit.source == source and b.unit.layer == layer and b.predictor == TOKEN_LOOKUP
                  and b.scoring_set == "top-and-random"}
        graphs = store.graphs.firing_f1(run.run_id, layer, source)
        topics = store.topics.best_scores(info.model_id, source, layer, TOPIC_MODE)
        metrics = []
        for i in picked:
            f1, base = graphs.get(i, (None, None))
            best, rnd = topics.get(i, (None, None))
            metrics.append(UnitMetrics(kind=kind, unit=UnitId(source, layer, i), density=summaries[i].frac_active,
                                       token_lookup=scores.get(i), n2g_f1=f1, n2g_baseline_f1=base, topic_npmi=best,
                                       random_npmi=rnd))
        out.append(KindSummary(kind, source, len(summaries), len(live), metrics))
    return out


def compare_units(job: CompareJob, db: Path, progress: Progress = Progress()) -> list[KindSummary]:
    """Harvest what is missing (the SAE's features and the two baselines, with the layer's neurons), run the
    lenses on each kind's sample (resumable: every lens skips what it has), return ``kind_table``."""
    from analysis.jobs.harvest import HarvestJob, harvest
    from analysis.jobs.n2g import N2GJob, n2g
    from analysis.jobs.score import ScoreJob, score
    from analysis.jobs.topics import TopicsJob, topics
    from analysis.sae.load import load_sae
    from cache.store import open_store

    bad = [x for x in job.lenses if x not in LENSES]
    if bad:
        raise UserError(f"--lenses: unknown {', '.join(bad)} (use some of {', '.join(LENSES)})")
    if job.units < 1:
        raise UserError("--units must be at least 1")
    sae = load_sae(job.sae)
    if sae.is_transcoder:
        raise UserError(f"--sae {job.sae} is a transcoder: pass it as --transcoder, beside an SAE of the layer")
    if sae.layer != job.layer:
        raise UserError(f"the SAE reads layer {sae.layer}, not layer {job.layer}")
    tc = load_sae(job.transcoder) if job.transcoder else None
    if tc is not None and (not tc.is_transcoder or tc.layer != job.layer):
        raise UserError(f"--transcoder {job.transcoder}: " + (f"it reads layer {tc.layer}, not layer {job.layer}"
                        if tc.is_transcoder else "it is an autoencoder of one site, not a transcoder"))
    tc_source = tc.source if tc is not None else None
    harvest(HarvestJob(model=job.model, corpus=job.corpus, layers=str(job.layer),
                       sae=(job.sae,) + ((job.transcoder,) if tc is not None else ()),
                       baselines=("basis", "random"), max_tokens=job.max_tokens, device=job.device,
                       config=job.config), db, progress)
    with open_store(db, read_only=True) as store:
        samples = {k.kind: (k.source, [m.unit.index for m in k.metrics])
                   for k in kind_table(store, job.model, job.layer, sae.source, job.units, job.seed, tc_source)}
    for kind, (source, picked) in samples.items():
        if not picked:
            progress.note(f"{kind}: no unit fires at all: nothing to compare")
            continue
        spec = ",".join(map(str, picked))
        progress.note(f"{kind} ({source}): {len(picked)} units")
        if TOKEN_LOOKUP in job.lenses:
            score(ScoreJob(layer=job.layer, neurons=spec, model=job.model, source=source, simulator=TOKEN_LOOKUP),
                  db, progress)
        if "topics" in job.lenses:
            topics(TopicsJob(layer=job.layer, neurons=spec, model=job.model, source=source, modes=(TOPIC_MODE,),
                             device=job.device, npmi=job.npmi), db, progress, with_sets=False)
        if "n2g" in job.lenses and job.n2g_units > 0:
            some = ",".join(map(str, sample_units(picked, job.n2g_units, job.seed, kind + "/n2g")))
            n2g(N2GJob(layer=job.layer, neurons=some, model=job.model, source=source, device=job.device), db, progress)
    with open_store(db, read_only=True) as store:
        return kind_table(store, job.model, job.layer, sae.source, job.units, job.seed, tc_source)
