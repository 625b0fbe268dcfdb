"""The harvest's memory model and its plan: how many bytes each unit costs (state, a batch's activations, the
fold and the write), and the layers split into passes that fit a memory budget.

A pass harvests some slots (a layer's neurons, a dictionary's features) over every window; its state lives until
each slot is written, one slot at a time. Its peak is

    base + sum over its slots (state + held activations) + the largest one slot's transient (fold or write)

where ``base`` is the process before the harvest (the model loaded), state is exact from the shapes, held
activations are a batch's site activations (float32, kept until every slot has folded the batch) and the
transients were measured against peak RSS (``bench/scale.py``, bench/RESULTS.md "Scale"). The same model sizes a
GPU harvest against the GPU's memory (the states live there).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from analysis.config import HarvestConfig
from analysis.histogram import HIST_BINS
from analysis.progress import fmt_bytes
from analysis.types import UserError

FOLD_TRANSIENT = 12
"""Bytes per (unit, batch token) of one slot's fold: a masked float32 copy, the real tokens' float32 rows, a
float16 copy. (The forward pass's own tensors are measured: ``probe_forward``.)"""

WRITE_TRANSIENT = 2.0
"""A slot's write allocates this many times its records' bytes (sorted copies of the top list and the pool,
the records to insert, DuckDB's buffers) plus ``2 x`` its token sums (the means and their ranking)."""
DEFAULT_SHARE = 0.8
"""The default budget: the process now plus this share of the memory available now (the kernel's MemAvailable;
on a GPU, of its free memory)."""
DISK_PER_RECORD = 160.0
"""Database bytes per stored (unit, window) record at 64 tokens, with its sample rows and the unit's statistics
(the demo harvest: 8,900 bytes per neuron at top-k 30, a 50-window pool; bench/RESULTS.md)."""


@dataclass(frozen=True)
class UnitBytes:
    """Bytes per unit of each part of a harvest's state and of its transients, for one config."""

    top: int
    """The top-k list: window max (float32), window id (int64), activations (float16 x seq_len)."""
    pool: int
    """The random pool: key and window id (int64), window max (float32), activations (float16 x seq_len)."""
    histogram: int
    moments: int
    """n-weighted mean and M2..M4 (float64), min and max (float32), count above 0 (int64)."""
    token_sums: int
    """A float32 sum per token-table row (and one for the rest)."""
    held: int
    """A batch's float32 activations, held until every slot of the pass has folded it."""
    fold: int
    """What folding a batch allocates for one slot."""
    write: int
    """What writing one slot allocates."""

    @property
    def state(self) -> int:
        return self.top + self.pool + self.histogram + self.moments + self.token_sums

    @staticmethod
    def of(cfg: HarvestConfig, table_rows: int, batch: int, prefix: int = 1) -> "UnitBytes":
        T = cfg.seq_len
        top, pool = cfg.top_k * (4 + 8 + 2 * T), cfg.pool * (8 + 8 + 4 + 2 * T)
        sums = (table_rows + 1) * 4
        records = (cfg.top_k + cfg.pool) * 2 * T
        return UnitBytes(top=top, pool=pool, histogram=HIST_BINS * 8, moments=4 * 8 + 2 * 4 + 8, token_sums=sums,
                         held=batch * (T + prefix) * 4, fold=FOLD_TRANSIENT * batch * T,
                         write=int(WRITE_TRANSIENT * records + 2 * sums))


@dataclass(frozen=True)
class Pass:
    slots: tuple
    """(source, layer) keys, in order."""
    units: int
    peak: float
    """Estimated peak bytes of the process (or the GPU) while it runs."""


@dataclass(frozen=True)
class HarvestPlan:
    per_unit: UnitBytes
    base: float
    """Bytes before the harvest (this process with the model loaded; on a GPU its allocated memory) and the forward
    pass's own (``probe_forward``)."""
    forward: float
    budget: float
    budget_basis: str
    """Where the budget comes from ('--max-memory', or the default's share of what is available now)."""
    passes: list[Pass]
    seconds: float
    seconds_basis: str
    disk: float
    """Estimated database growth plus the largest pass's checkpoint."""
    device: str = "cpu"
    workers: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> float:
        return max((p.peak for p in self.passes), default=self.base)


def pass_peak(slots: dict, u: UnitBytes, base: float) -> float:
    """Peak bytes of a pass over ``slots`` ((source, layer) -> units)."""
    if not slots:
        return base
    held = sum(n * (u.state + u.held) for n in slots.values())
    return base + held + max(slots.values()) * max(u.fold, u.write)


def split_passes(slots: dict, u: UnitBytes, base: float, budget: float, at_least: int = 1) -> list[Pass]:
    """Slots in order, grouped greedily into passes that fit ``budget`` (at least ``at_least`` passes, as even as
    the slots allow: a Ray cluster's workers each take one). Raises UserError when one slot alone does not fit."""
    keys = list(slots)
    for k in keys:
        if pass_peak({k: slots[k]}, u, base) > budget:
            raise UserError(_too_big(k, slots[k], u, base, budget))
    groups: list[list] = []
    for k in keys:
        if groups and pass_peak({g: slots[g] for g in groups[-1] + [k]}, u, base) <= budget:
            groups[-1].append(k)
        else:
            groups.append([k])
    want = min(len(keys), max(at_least, len(groups)))
    if want > len(groups):  # even sizes: fewer slots per pass can only lower each peak
        size = -(-len(keys) // want)
        groups = [keys[i : i + size] for i in range(0, len(keys), size)]
    return [Pass(tuple(g), sum(slots[k] for k in g), pass_peak({k: slots[k] for k in g}, u, base)) for g in groups]


def _too_big(key, units: int, u: UnitBytes, base: float, budget: float) -> str:
    need = pass_peak({key: units}, u, base)
    return (f"one layer does not fit the memory budget: {key[0]} layer {key[1]} ({units:,} units) needs ≈ "
            f"{fmt_bytes(need)} (base {fmt_bytes(base)}; per unit: state {fmt_bytes(u.state)} = top "
            f"{fmt_bytes(u.top)} + pool {fmt_bytes(u.pool)} + histogram {fmt_bytes(u.histogram)} + token sums "
            f"{fmt_bytes(u.token_sums)}; a batch {fmt_bytes(u.held)}; transient {fmt_bytes(max(u.fold, u.write))}) "
            f"and the budget is {fmt_bytes(budget)}. Lower --top-k, --seq-len, --token-table or --batch-size, or "
            "raise --max-memory")


# ---- what this machine has -----------------------------------------------------------------------------------

def _meminfo(name: str, path: str = "/proc/meminfo") -> float | None:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(name + ":"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def rss() -> float:
    """This process's resident memory now."""
    return _meminfo("VmRSS", "/proc/self/status") or 0.0


def peak_rss() -> float:
    """This process's peak resident memory so far."""
    return _meminfo("VmHWM", "/proc/self/status") or 0.0


def available() -> float:
    """Memory the kernel says can be used now without swapping (MemAvailable)."""
    got = _meminfo("MemAvailable")
    if got is None:
        got = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return got


def reset_peak() -> bool:
    """Start this process's peak RSS afresh (Linux: ``clear_refs``); False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def probe_forward(subject, windows: list, sites: list, batch: int, seq_len: int, device: str) -> float:
    """Bytes the forward pass of a batch takes beyond the activations it hands over, measured on the first batch
    (peak RSS, or the GPU's peak allocation): models differ here (attention, the MLP's intermediates, first-call
    caches, what the allocator keeps of it), so it is measured, not modelled. A smaller batch scaled up measured
    the first call's one-time costs times the scale."""
    import torch

    from analysis.activations import site_activations
    from analysis.harvest.driver import pad_batch

    few = windows[:batch]
    if not few:
        return 0.0
    enc, _ = pad_batch(subject, few, seq_len)
    gpu = str(device).startswith("cuda")
    if gpu:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        before = rss()
        if not reset_peak():
            return 0.0
    with torch.inference_mode():
        acts = site_activations(subject, enc.input_ids, enc.attention_mask, sites)
        held = sum(a.numel() * a.element_size() for a in acts.values())
        del acts
    peak = torch.cuda.max_memory_allocated() if gpu else peak_rss()
    return max(0.0, peak - before - held)


def in_use(device: str) -> float:
    """This process's memory now (on a GPU: allocated there)."""
    if str(device).startswith("cuda"):
        import torch

        return float(torch.cuda.memory_allocated())
    return rss()


def budget_of(max_memory: str | None, device: str, base: float | None = None) -> tuple[float, float, str]:
    """(base, budget, where the budget comes from): base is ``in_use`` unless given. The default budget is base
    plus ``DEFAULT_SHARE`` of what is free now."""
    base = in_use(device) if base is None else base
    if str(device).startswith("cuda"):
        import torch

        spare, what = float(torch.cuda.mem_get_info()[0]), "the GPU's free memory"
    else:
        spare, what = available(), "the memory available now"
    if max_memory is not None:
        return base, parse_bytes(max_memory), "--max-memory"
    return base, base + DEFAULT_SHARE * spare, f"{DEFAULT_SHARE:.0%} of {what} ({fmt_bytes(spare)})"


def parse_bytes(text: str) -> float:
    """'12G', '800M', '2.5GB', '1e9' -> bytes (decimal units, as ``fmt_bytes`` writes them)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmgt]?)b?\s*", str(text), re.IGNORECASE)
    if not m:
        raise UserError(f"--max-memory {text!r}: use a size such as 12G, 800M or 2.5GB")
    return float(m.group(1)) * 1000 ** "_kmgt".index(m.group(2).lower() or "_")
