"""The output scorer: does the unit, clamped high, raise the log-probabilities of the tokens its explanation names?

The definition (its parameters are ``PARAMS``):
1. Named tokens: the strings the explanation quotes ('...' or "...", read as Python string literals where they
   are), else its words (runs of letters and digits, stop words and words like "token" left out). Strings named
   after "suppresses" / "lowers" / "decreases" / "inhibits" (up to a ';' or a "promotes" / "raises" /
   "increases" / "boosts") are left out: what an explanation says the unit lowers is no positive. Each string is
   looked up in the vocabulary as written and with / without one leading space; only whole tokens count, and a
   string that is no token is skipped (said in the notes).
2. Controls: for each named token, the ``CONTROLS`` tokens nearest to it in frequency rank (counts of the token
   ids in the run's harvested windows; ranks by count, descending, then by id; the nearer rank first, on equal
   distance the more frequent one), neither named nor special nor picked already.
3. The clamp: the unit set to its typical high value, the median over its top records of each record's maximum
   activation, at every token of its first ``RECORDS`` random records (the BOS prefix is left alone). A neuron's
   activation is overwritten; a feature's site vector moves along its decoder direction by (value - activation),
   the reconstruction error kept (``analysis.causal``'s convention).
4. ``delta[t]``: the mean over those records' positions of log p(t) clamped - log p(t) clean (full softmax).
5. The score: AUROC of ``delta``, named tokens positive and controls negative (``classification``, with its
   stratified bootstrap interval). ``metrics["z"]``: (mean delta of the named - mean delta of the controls) / the
   controls' standard deviation, with a 95 % interval from a bootstrap over records.

Batched across units: the windows of one layer's rows run together, and from the unit's layer on each window's
batch row is forked into its clean row and one row per (unit, record) that clamps it, each row editing its own
unit (``clamped_sums``): the blocks before the layer and the clean pass run once per window, shared by every unit.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from analysis.activations import edited_features, edited_site
from analysis.progress import Progress
from analysis.scorers import ScorerResult, classification, failed
from analysis.scorers import metrics as m
from analysis.types import MLP, UserError
from analysis.words import STOP_WORDS

RECORDS = 8
"""Random records per unit the clamp runs on."""
CONTROLS = 3
"""Control tokens per named token."""
PARAMS = {"records": RECORDS, "controls": CONTROLS, "clamp": "median of top records' max",
          "positions": "every record token"}
LOGITS_BUDGET = 1 << 26
"""float32 log-probabilities held at once while reducing (256 MB): rows per slice = this // (tokens x vocab)."""
MAX_ROWS = 64
"""Batch rows (clean + clamped) per forward pass."""

_QUOTED = re.compile(r"""(?<![\w'"])('(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")(?!\w)""")
_WORD = re.compile(r"[A-Za-z0-9]+")
_DIRECTION = re.compile(r"\b(suppress|lower|decreas|inhibit)\w*|\b(?:promot|rais|increas|boost)\w*|;", re.I)
_META = {"token", "tokens", "word", "words", "neuron", "unit", "feature", "fires", "activates"}


def params_of(job) -> dict:
    """The scorer's parameters (fixed: the score job has no options for them)."""
    return dict(PARAMS)


def named_strings(text: str) -> list[str]:
    """The strings an explanation names as what the unit raises (module doc, 1), in order, once each."""
    quoted = list(_QUOTED.finditer(text))
    matches = quoted or [w for w in _WORD.finditer(text) if w.group().lower() not in STOP_WORDS | _META
                         and not _DIRECTION.fullmatch(w.group())]
    out, last, lowered = [], 0, False
    for match in matches:
        for kw in _DIRECTION.finditer(text[last:match.start()]):
            lowered = kw.group(1) is not None  # the last direction word before the name decides
        last = match.end()
        s = match.group()
        if quoted:
            try:
                s = ast.literal_eval(s)
            except (ValueError, SyntaxError):
                s = s[1:-1]
        if not lowered and isinstance(s, str) and s and s not in out:
            out.append(s)
    return out


def token_index(vocab: dict[int, str]) -> dict[str, list[int]]:
    """token string -> the ids that read as it."""
    index: dict[str, list[int]] = {}
    for t, s in vocab.items():
        index.setdefault(s, []).append(t)
    return index


def token_ids_of(s: str, index: dict[str, list[int]]) -> list[int]:
    """The single tokens a named string is: as written and with / without one leading space."""
    variants = [s, s[1:]] if s.startswith(" ") else [s, " " + s]
    return sorted({t for v in variants for t in index.get(v, [])})


def frequency_order(counts: dict[int, int], ids) -> list[int]:
    """``ids`` by count in the harvest (descending), then by id: the frequency ranks controls are matched on."""
    return sorted(set(ids), key=lambda t: (-counts.get(t, 0), t))


def control_tokens(named: list[int], order: list[int], eligible: set[int], k: int = CONTROLS) -> list[list[int]]:
    """Per named token, ``k`` tokens of ``eligible`` nearest to it in ``order`` (module doc, 2); ``order`` holds
    every named and eligible token."""
    rank = {t: i for i, t in enumerate(order)}
    taken, out = set(named), []
    for t in named:
        r, mine = rank[t], []
        for d in range(1, len(order)):
            for j in (r - d, r + d):
                if 0 <= j < len(order) and order[j] in eligible and order[j] not in taken and len(mine) < k:
                    mine.append(order[j])
                    taken.add(order[j])
            if len(mine) == k or (r - d < 0 and r + d >= len(order)):
                break
        out.append(mine)
    return out


def typical_high(rec) -> float | None:
    """The median over the unit's top records of each record's maximum activation (None without top records)."""
    tops = [max(r.activations) for r in rec.most_positive_activation_records if r.activations]
    return float(np.median(tops)) if tops else None


# ---- the batched clamp ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Clamp:
    """One clamped batch row: unit ``unit`` of the layer set to ``value`` at every token of window ``window``."""

    unit: int
    value: float
    window: int
    """Index into the windows ``clamped_sums`` is given."""


@contextmanager
def _forked(subject, layer: int, take: torch.Tensor, n: int) -> Iterator[None]:
    """From block ``layer`` on, the batch's ``n`` rows go on as rows ``take`` of them (``[n + R]``): each block's
    input and every other batch-shaped argument (a sliding-window mask) gathered. The hooks run first and are
    always removed."""

    def grow(v):
        if isinstance(v, tuple):
            return tuple(grow(x) for x in v)
        return v.index_select(0, take.to(v.device)) if torch.is_tensor(v) and v.dim() >= 2 and v.shape[0] == n else v

    def pre(_module, args, kwargs):
        return grow(tuple(args)), {k: grow(v) for k, v in kwargs.items()}

    handles = [b.register_forward_pre_hook(pre, with_kwargs=True, prepend=True) for b in subject.blocks()[layer:]]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _clamping(n: int, n_prefix: int, units: torch.Tensor, values: torch.Tensor, sae=None):
    """The site edit of rows ``n:`` of ``[n + R, P, width]``: row ``n + r`` gets unit ``units[r]`` set to
    ``values[r]`` at positions ``n_prefix:`` (``x``: what a dictionary reads there, ``analysis.activations.
    edited_features``)."""

    def apply(h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        out = h.clone()
        part = out[n:, n_prefix:]  # a view: [R, T, width]
        idx = units.to(h.device)[:, None, None].expand(-1, part.shape[1], 1)
        v = values.to(h.device, torch.float32)
        if sae is None:
            part.scatter_(-1, idx, v[:, None, None].expand(idx.shape).to(h.dtype))
        else:
            a = sae.encode(x[n:, n_prefix:]).gather(-1, idx)[..., 0].float()  # [R, T]
            dirs = sae.direction(units.to(sae.W_dec.device)).to(h.device, torch.float32)  # [R, d]
            part.copy_((part.float() + (v[:, None] - a)[..., None] * dirs[:, None, :]).to(h.dtype))
        return out

    return apply


def _chunks(windows: list[list[int]], clamps: list[Clamp], max_rows: int) -> list[list[tuple[int, list[int]]]]:
    """Forward passes: lists of (window index, its clamp indices), windows of one length together, at most
    ``max_rows`` rows (a window and its clamps) each; a window with more clamps than fit goes into several."""
    by_window: dict[int, list[int]] = {}
    for i, c in enumerate(clamps):
        by_window.setdefault(c.window, []).append(i)
    step = max(max_rows - 1, 1)
    parts = [(w, cs[b:b + step]) for w, cs in sorted(by_window.items(), key=lambda kv: (len(windows[kv[0]]), kv[0]))
             for b in range(0, len(cs), step)]
    out, rows = [], 0
    for w, cs in parts:
        if out and (rows + 1 + len(cs) > max_rows or len(windows[w]) != len(windows[out[-1][0][0]])):
            out.append([])
            rows = 0
        if not out:
            out.append([])
        out[-1].append((w, cs))
        rows += 1 + len(cs)
    return out


def _summed_logprobs(subject, hidden: torch.Tensor) -> torch.Tensor:
    """``[B, V]`` float64: per row, the sum over positions of the log-softmax of the logits of ``hidden``
    (``[B, T, d]``, the decoder's output): sum of logits - sum of log-normalisers, the log-probabilities never held
    whole, a slice of rows at a time (``LOGITS_BUDGET``)."""
    B, T = hidden.shape[:2]
    V = subject.model.get_output_embeddings().weight.shape[0]
    step = max(1, LOGITS_BUDGET // max(T * V, 1))
    out = torch.empty((B, V), dtype=torch.float64, device=hidden.device)
    for b in range(0, B, step):
        logits = subject.logits(hidden[b:b + step]).float()  # [s, T, V]
        lse = torch.logsumexp(logits, -1).sum(1, dtype=torch.float64)  # [s]
        out[b:b + step] = logits.sum(1, dtype=torch.float64) - lse[:, None]
    return out


@torch.inference_mode()
def clamped_sums(subject, layer: int, windows: list[list[int]], clamps: list[Clamp], tokens: list[np.ndarray],
                 sae=None, max_rows: int = MAX_ROWS, bar=None) -> list[np.ndarray]:
    """Per clamp ``i``: ``[len(tokens[i])]`` float64, the sum over its window's token positions of log p clamped -
    log p clean of the token ids ``tokens[i]``. ``windows``: token ids (no BOS; the model's is put first). A
    neuron's clamp (``sae`` None) overwrites the layer's MLP activation; a feature's moves the dictionary's site."""
    if sae is None:
        for c in clamps:
            subject.check_neuron(c.unit)
    else:
        if sae.layer != layer or any(not 0 <= c.unit < sae.d_sae for c in clamps):
            raise UserError(f"{sae.name} reads layer {sae.layer} and has features 0..{sae.d_sae - 1}")
    subject.check_layer(layer)
    device = subject.device
    out: list[np.ndarray | None] = [None] * len(clamps)
    for chunk in _chunks(windows, clamps, max_rows):
        enc = subject.encode([windows[w] for w, _cs in chunk])  # one length: no padding, no mask
        n, p = len(chunk), enc.n_prefix
        rows = [i for _w, cs in chunk for i in cs]
        source = list(range(n)) + [j for j, (_w, cs) in enumerate(chunk) for _ in cs]  # row -> its window's row
        take = torch.tensor(source, device=device)
        units = torch.tensor([clamps[i].unit for i in rows], dtype=torch.int64)
        values = torch.tensor([clamps[i].value for i in rows], dtype=torch.float32)
        clamp = _clamping(n, p, units, values, sae)
        with _forked(subject, layer, take, n), (edited_site(subject, layer, "mlp_in", lambda h: clamp(h, h))
                                                if sae is None else edited_features(subject, sae, clamp)):
            hidden = subject.base()(input_ids=enc.input_ids.to(device), use_cache=False).last_hidden_state
        logp = _summed_logprobs(subject, hidden[:, p:]).cpu()  # [n + R, V]
        for k, i in enumerate(rows):
            ids = torch.as_tensor(tokens[i], dtype=torch.int64)
            out[i] = (logp[n + k, ids] - logp[source[n + k], ids]).numpy()
        if bar is not None:
            bar.update(len(rows))
    return out


# ---- the scorer ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Plan:
    """What one explanation is scored on."""

    named: list[int]
    controls: list[int]
    notes: list[str]


def _plan(text: str, index: dict, order: list[int], eligible: set[int], counts: dict) -> _Plan | str:
    """The named and control tokens of an explanation, or why it cannot be scored."""
    if not text.strip():
        return "the explanation is empty"
    strings = named_strings(text)
    found = {s: token_ids_of(s, index) for s in strings}
    named = sorted({t for ids in found.values() for t in ids})
    missing = [s for s, ids in found.items() if not ids]
    if not named:
        return ("names no token: none of its quoted strings or words is a single token of the vocabulary "
                f"({', '.join(map(repr, strings[:8])) or 'nothing named'}); the output scorer does not apply")
    notes = [f"not single tokens, left out: {', '.join(map(repr, missing[:12]))}"] if missing else []
    extra = [t for t in named if t not in eligible]
    full = frequency_order(counts, list(order) + extra) if extra else order
    controls = [t for ts in control_tokens(named, full, eligible) for t in ts]
    return _Plan(named, controls, notes)


def _z(sums: np.ndarray, positions: np.ndarray, labels: np.ndarray) -> float | None:
    """(mean delta of the named - of the controls) / the controls' std (population); None when that std is 0."""
    delta = sums.sum(0) / positions.sum()
    sd = float(delta[~labels].std())
    return None if sd == 0 else float((delta[labels].mean() - delta[~labels].mean()) / sd)


def _result(plan: _Plan, sums: np.ndarray, positions: np.ndarray, value: float, vocab: dict, counts: dict,
            params: dict) -> ScorerResult:
    """The verdict from per-record sums ``[n_records, named + controls]`` over ``positions`` ``[n_records]``."""
    ids = plan.named + plan.controls
    labels = np.array([True] * len(plan.named) + [False] * len(plan.controls))
    delta = sums.sum(0) / positions.sum()
    examples = [{"token_id": int(t), "token": vocab.get(t, f"<{t}>"), "label": int(y), "prediction": float(d),
                 "verdict": None, "count": int(counts.get(t, 0))} for t, y, d in zip(ids, labels, delta)]
    notes = plan.notes + [f"clamped at {value:.4g} (the median of its top records' maxima) over {len(positions)} "
                          f"random records ({int(positions.sum())} positions)"]
    res = classification("output", params, examples, notes=notes)
    z = _z(sums, positions, labels)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(positions), (m.RESAMPLES, len(positions)))
    boot = [_z(sums[i], positions[i], labels) for i in idx]
    lo, hi = m.interval(np.array([np.nan if b is None else b for b in boot]))
    return dataclasses.replace(res, metrics={**res.metrics, "z": {"value": z, "lo": lo, "hi": hi}})


def score_output(job, db: Path, items: list, progress: Progress = Progress(), subject=None, sae=None,
                 max_rows: int = MAX_ROWS) -> list[ScorerResult]:
    """The output score of each (UnitRecord, explanation text) of one layer and source (``job.layer``,
    ``job.source``), in order. ``subject`` / ``sae``: already loaded (else loaded as the job says)."""
    from analysis.jobs.reads import cached_model, load_dictionary_of
    from analysis.models import load_cached_subject
    from cache.store import open_store

    params = params_of(job)
    if not items:
        return []
    with open_store(db, read_only=True) as store:
        info = cached_model(store, job.model)
        vocab = store.catalog.vocab(info.tokenizer_id)
        counts = store.records.token_counts(items[0][0].run_id)
        if sae is None and job.source != MLP:
            sae = load_dictionary_of(store, job.source)
    if subject is None:
        subject = load_cached_subject(info, job.device)
    sae = sae.to(subject.device) if sae is not None else None
    n_vocab = subject.model.get_output_embeddings().weight.shape[0]
    vocab = {t: s for t, s in vocab.items() if t < n_vocab}
    eligible = set(vocab) - set(subject.tokenizer.all_special_ids)
    order, index = frequency_order(counts, eligible), token_index(vocab)
    plans = [_plan(text, index, order, eligible, counts) for _rec, text in items]
    results: list[ScorerResult | None] = [None] * len(items)
    units: dict[int, dict] = {}  # unit index -> {"value", "records", "tokens"}
    for i, ((rec, _text), plan) in enumerate(zip(items, plans)):
        value, records = typical_high(rec), rec.random_sample[:RECORDS]
        why = plan if isinstance(plan, str) else (
            "no top records: no typical high value to clamp at" if value is None else
            "no random records to clamp the unit on" if not records else None)
        if why is not None:
            results[i] = failed("output", params, why)
            continue
        u = units.setdefault(rec.unit.index, {"value": value, "records": records, "tokens": set()})
        u["tokens"].update(plan.named + plan.controls)
    windows, where, clamps, tokens = [], {}, [], []
    for u, spec in units.items():
        spec["tokens"] = np.array(sorted(spec["tokens"]), dtype=np.int64)
        for r in spec["records"]:
            if r.window_id not in where:
                where[r.window_id] = len(windows)
                windows.append(list(r.token_ids))
            clamps.append(Clamp(u, spec["value"], where[r.window_id]))
            tokens.append(spec["tokens"])
    bar = progress.bar(len(clamps), f"output L{job.layer} (clamped rows)", unit="row")
    sums = clamped_sums(subject, job.layer, windows, clamps, tokens, sae, max_rows, bar)
    bar.close()
    per_unit: dict[int, tuple[list, list]] = {}
    for c, s in zip(clamps, sums):
        rows, pos = per_unit.setdefault(c.unit, ([], []))
        rows.append(s)
        pos.append(len(windows[c.window]))
    for i, ((rec, _text), plan) in enumerate(zip(items, plans)):
        if results[i] is not None:
            continue
        spec = units[rec.unit.index]
        rows, pos = per_unit[rec.unit.index]
        cols = np.searchsorted(spec["tokens"], plan.named + plan.controls)
        results[i] = _result(plan, np.stack(rows)[:, cols], np.array(pos, dtype=np.float64), spec["value"], vocab,
                             counts, params)
    return results
