"""Job: start from a prompt (analysis/attribution.py). Which units fire relative to their corpus maximum, which
cause the model's prediction at a position (attribution through the frozen model), the top ones checked by real
ablation, and optionally how they connect. The Prompt page and ``python -m analysis attribute`` share it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from analysis.attribution.check import check_by_ablation, Checked, spearman
from analysis.attribution.frozen import attribute, Attribution
from analysis.attribution.graph import connect, PromptGraph
from analysis.attribution.units import layer_position_map, relative, Target, top_units, UnitAt
from analysis.config import DEFAULT_MODEL
from analysis.jobs.specs import fmt_layers
from analysis.types import MLP, UserError


@dataclass(frozen=True)
class AttributeJob:
    text: str
    """The prompt."""
    model: str = DEFAULT_MODEL
    """Model name as cached."""
    target: str | None = None
    """The next token to explain, as text (its first token if it is several); None: the model's top prediction."""
    position: int | None = None
    """The position whose next token is the target (0-based; None: the last token)."""
    contrast: str | None = None
    """A token to explain the target against (the logit difference target − contrast), as text."""
    sae: tuple[str, ...] | None = None
    """Dictionaries (ids sae:<name>@<hash>, folders or bare names) whose features count as units too (None: every
    dictionary of the model in the database)."""
    top: int = 20
    """Units listed by relative activation and by attribution (positive and negative each)."""
    check: int = 32
    """Top units by absolute attribution ablated for real, beside their linear estimate (0: none)."""
    graph: bool = False
    """Also connect the top units in a graph (one backward per node)."""
    graph_nodes: int = 30
    """Units in the graph (at most 50)."""
    first: bool = False
    """List units at the first position too (left out by default: an attention sink there, with activations and
    attributions many times any other position's, would fill every list)."""
    device: str = "cpu"
    """Cpu or cuda."""


@dataclass
class PromptReport:
    """What the Prompt page and the CLI show."""

    tokens: list[str]
    """The prompt's tokens as text."""
    token_ids: list[int]
    target: Target
    target_text: str
    contrast_text: str | None
    fires: list[UnitAt]
    """Top (unit, position) pairs by activation relative to the unit's corpus maximum."""
    fires_raw: list[UnitAt]
    """Top units by raw activation among those with no harvest in the database (``raw_keys``)."""
    raw_keys: list[tuple[str, int]]
    """(source, layer) pairs with no harvest maxima: ranked by raw activation, apart."""
    fires_map: torch.Tensor
    """``[n_layers, T]``: the largest relative activation per layer and position."""
    relative: dict
    """``{(source, layer): [T, n]}`` relative activations (for the per-token lists)."""
    attribution: Attribution
    positive: list[UnitAt]
    negative: list[UnitAt]
    share: float
    """Of the sum of |attribution| over every unit at the listed positions, the part the listed units carry."""
    attribution_map: torch.Tensor
    """``[n_layers, T]``: the sum of |attribution| per layer and position."""
    checked: list[Checked] = field(default_factory=list)
    rank_correlation: float | None = None
    """Spearman between the checked units' estimates and their real effects."""
    graph: PromptGraph | None = None
    notes: list[str] = field(default_factory=list)
    """What the run had to decide for the user (a cut text, a target of several tokens, ...)."""

    def to_json(self) -> dict:
        def unit(u: UnitAt) -> dict:
            return {"unit": str(u.unit), "source": u.unit.source, "layer": u.unit.layer, "index": u.unit.index,
                    "position": u.position, "token": self.tokens[u.position], "value": u.value,
                    "activation": u.activation}
        return {"tokens": self.tokens, "token_ids": self.token_ids,
                "target": {"position": self.target.position, "token": self.target_text, "token_id": self.target.token,
                           "contrast": self.contrast_text, "contrast_id": self.target.contrast,
                           "value": self.attribution.value},
                "fires": [unit(u) for u in self.fires], "fires_raw": [unit(u) for u in self.fires_raw],
                "raw": [{"source": s, "layer": layer} for s, layer in self.raw_keys],
                "attribution": {"positive": [unit(u) for u in self.positive],
                                "negative": [unit(u) for u in self.negative], "share": self.share},
                "check": {"units": [{**unit(c.unit), "estimate": c.estimate, "real": c.real, "agrees": c.agrees}
                                    for c in self.checked], "spearman": self.rank_correlation},
                "graph": self.graph.to_json() if self.graph is not None else None, "notes": self.notes}


def token_of(tokenizer, text: str, what: str, notes: list[str]) -> int:
    """The id of ``text``'s first token (said in ``notes`` when it has several)."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    if not ids:
        raise UserError(f"the {what} {text!r} has no tokens")
    if len(ids) > 1:
        notes.append(f"the {what} {text!r} is {len(ids)} tokens "
                     f"({', '.join(repr(tokenizer.decode([i])) for i in ids)}): its first, "
                     f"{tokenizer.decode(ids[:1])!r}, is used")
    return ids[0]


def prompt_ids(subject, text: str, notes: list[str]) -> list[int]:
    """The prompt's token ids (BOS first where the model wants one), cut to the model's context (said)."""
    if not text.strip():
        raise UserError("the text is empty: give a prompt")
    ids = subject.bos_prefix + subject.tokenize(text)
    limit = subject.context_length or len(ids)
    if len(ids) > limit:
        notes.append(f"the text is {len(ids)} tokens, over the model's context of {limit}: cut to its first {limit}")
        ids = ids[:limit]
    return ids


def report(subject, job: AttributeJob, saes: tuple = (), maxima: dict | None = None) -> PromptReport:
    """Everything the page and the CLI show, for a loaded subject, its dictionaries and the units' corpus maxima
    (``{(source, layer): [n] tensor}``; a key missing ranks raw)."""
    notes: list[str] = []
    tok = subject.tokenizer
    ids = prompt_ids(subject, job.text, notes)
    position = len(ids) - 1 if job.position is None else job.position
    if not 0 <= position < len(ids):
        raise UserError(f"position {position} is out of range: the prompt has {len(ids)} tokens (0 .. {len(ids) - 1})")
    contrast = token_of(tok, job.contrast, "contrast", notes) if job.contrast else None
    target_id = token_of(tok, job.target, "target", notes) if job.target else None
    att = attribute(subject, ids, Target(position, target_id, contrast), saes)  # the model runs once, forward + back
    target, acts = att.target, att.acts
    maxima = maxima or {}
    rel = relative(acts, maxima)
    raw_keys = [k for k in acts if maxima.get(k) is None]
    raw = sorted({k[0] for k in raw_keys})
    if raw_keys:
        notes.append("no harvest of " + "; ".join(
            f"{source} at layer(s) {fmt_layers(sorted(k[1] for k in raw_keys if k[0] == source))}" for source in raw)
            + " in the database: those units are ranked by raw activation")
    skip = 0 if job.first or position == 0 else 1
    if skip:
        notes.append(f"units at the first token ({subject.tokenizer.decode(ids[:1])!r}) are left out of the lists: "
                     "an attention sink there would fill them (ask for the first token to list it)")

    def listed(scores: dict) -> dict:
        """Positions ``skip`` .. the target's: a unit after it cannot change the target."""
        return {k: v[skip:position + 1] for k, v in scores.items()}

    def shifted(units: list[UnitAt]) -> list[UnitAt]:
        return [UnitAt(u.unit, u.position + skip, u.value, u.activation) for u in units]

    acts_l, att_l = listed(att.acts), listed(att.scores)
    positive = shifted(top_units(att_l, job.top, acts=acts_l))
    negative = shifted(top_units(att_l, job.top, largest=False, acts=acts_l))
    total = float(sum(v.abs().sum() for v in att_l.values()))
    share = sum(abs(u.value) for u in {(u.unit, u.position): u for u in positive + negative}.values()) / total \
        if total else 0.0
    n_layers = subject.info.n_layers
    out = PromptReport(
        tokens=[tok.decode([i]) for i in ids], token_ids=ids, target=target, target_text=tok.decode([target.token]),
        contrast_text=tok.decode([contrast]) if contrast is not None else None,
        fires=shifted(top_units({k: v[skip:] for k, v in rel.items() if k not in raw_keys}, job.top,
                                acts={k: v[skip:] for k, v in acts.items()})),
        fires_raw=shifted(top_units({k: v[skip:] for k, v in acts.items() if k in raw_keys}, job.top,
                                    acts={k: v[skip:] for k, v in acts.items()})), raw_keys=raw_keys, fires_map=layer_position_map(rel, n_layers),
        relative=rel, attribution=att, positive=positive, negative=negative, share=share,
        attribution_map=layer_position_map(att.scores, n_layers, reduce="abs"), notes=notes)
    def by_abs(k: int) -> list[UnitAt]:
        """The top ``k`` by |attribution|, valued by their attribution."""
        return [UnitAt(u.unit, u.position, float(att.scores[(u.unit.source, u.unit.layer)][u.position, u.unit.index]),
                       u.activation) for u in shifted(top_units({k: v.abs() for k, v in att_l.items()}, k, acts=acts_l))]

    if job.check > 0:
        out.checked = check_by_ablation(subject, ids, target, by_abs(job.check), saes)
        out.rank_correlation = spearman([c.estimate for c in out.checked], [c.real for c in out.checked])
    if job.graph:
        out.graph = connect(subject, ids, att, by_abs(min(job.graph_nodes, 50)), saes)
    return out


def maxima_of(store, info, saes: tuple) -> dict:
    """``{(source, layer): [n] tensor}`` of the corpus maxima the database holds for the model's neurons and for
    ``saes``' features (a key without a finished run is left out: ranked raw)."""
    out = {}
    for layer in range(info.n_layers):
        run = store.runs.find(info.model_id, layer)
        if run is not None:
            out[(MLP, layer)] = torch.from_numpy(store.records.layer_maxima(run.run_id, MLP, layer, info.d_mlp))
    for sae in saes:
        run = store.runs.find(info.model_id, sae.layer, source=sae.source)
        if run is not None:
            out[(sae.source, sae.layer)] = torch.from_numpy(
                store.records.layer_maxima(run.run_id, sae.source, sae.layer, sae.d_sae))
    return {k: torch.nan_to_num(v, nan=0.0) for k, v in out.items()}


def attribute_prompt(job: AttributeJob, db: Path, subject=None, saes: tuple | None = None) -> PromptReport:
    """The job: reads the model's harvest maxima and dictionaries from ``db`` (a page passes its own loaded subject
    and dictionaries, under its model lock), loads what is not given, and reports."""
    from analysis.jobs.reads import cached_model, match_source
    from analysis.models import load_cached_subject
    from analysis.sae.load import load_dictionary
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        if saes is None:
            known = {d.source: d for d in store.catalog.dictionaries(info.model_id) if d.format != "baseline"}
            # each by its id, folder or bare name (analysis.jobs.reads.match_source)
            wanted = tuple(match_source(known.values(), s, f" of {info.name} in {db}") for s in job.sae) \
                if job.sae is not None else tuple(known)
            saes = tuple(load_dictionary(known[s]) for s in wanted)
        maxima = maxima_of(store, info, saes)
    subject = subject if subject is not None else load_cached_subject(info, job.device)
    return report(subject, job, saes, maxima)
