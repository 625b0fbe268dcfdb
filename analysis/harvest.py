"""The harvest: one streaming pass over token windows that keeps, for every unit of every requested slot (a
layer's neurons, or a dictionary's features at its layer), what the viewer and every method need, in memory that
does not grow with the corpus.

Shape: map + merge. ``LayerState.add_batch`` folds one batch of activations into a state (the map step, in
place); ``LayerState.merge`` combines the states of two disjoint window sets (associative up to float
rounding, tested), so shards can run anywhere and be combined in any grouping. On one machine the loop merges
batch after batch into a running state and checkpoints it after shards (every shard, unless saving would take
over a tenth of the time, as on a GPU), so an interrupted job resumes where it last saved and produces
bit-identical results.

Per unit (neuron) the state holds:
- the top-k windows by max activation, with their activations (float16);
- a uniform random pool of windows: bottom-``pool`` by a per-(layer, neuron, window) hash key (so each unit's
  sample is independent of the others', as OpenAI's), with activations. The random sample is the pool's first
  ``random_k`` by key; the quantile samples bin the pool by its own window-max quantiles;
- power moments (n, mean, M2, M3, M4 in float64, merged with Pebay's formulas), min, max, count > 0;
- a histogram on a fixed log grid read from the float16 bits (mergeable: the grid never depends on the data);
- per-token activation sums for the corpus's frequent tokens (the token table), counts shared by all units.

One module (longer than most) because the state's layout, its fold, merge, checkpoint and summary change
together.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from numba import get_num_threads, njit, prange

from analysis.config import HarvestConfig
from analysis.histogram import HIST_BINS
from analysis.progress import Progress
from analysis.models import Encoded
from analysis.types import MLP


def hist_bin_index(acts16: torch.Tensor) -> torch.Tensor:
    """The bin (0..255, uint8) of every float16 value: its high byte (see analysis/histogram.py)."""
    return acts16.contiguous().view(torch.uint8).view(*acts16.shape, 2)[..., 1]


# ---- a batch's per-unit sums ---------------------------------------------------------------------------

@njit(parallel=True, fastmath=True, cache=True)
def _power_sums(x, centre, threads, sums, n_pos):  # pragma: no cover - compiled
    """For every column j of ``x`` ``[n, N]`` float32: ``sums[k - 1, j] +=`` the float64 sum of (x - centre)^k,
    k = 1..4, and ``n_pos[j] +=`` the count of x > 0. Columns are split between the threads, rows walked in
    memory order with each thread's accumulators its own (the loop over columns runs in SIMD lanes)."""
    n, width = x.shape
    for t in prange(threads):
        lo, hi = width * t // threads, width * (t + 1) // threads
        w = hi - lo
        c = centre[lo:hi].astype(np.float64)
        pos = np.zeros(w, np.int64)
        s1, s2, s3, s4 = np.zeros(w), np.zeros(w), np.zeros(w), np.zeros(w)
        for r in range(n):
            row = x[r, lo:hi]
            for j in range(w):
                v = row[j]
                d = np.float64(v) - c[j]
                d2 = d * d
                s1[j] += d
                s2[j] += d2
                s3[j] += d2 * d
                s4[j] += d2 * d2
                pos[j] += v > 0
        for j in range(w):
            sums[0, lo + j] += s1[j]
            sums[1, lo + j] += s2[j]
            sums[2, lo + j] += s3[j]
            sums[3, lo + j] += s4[j]
            n_pos[lo + j] += pos[j]


@njit(parallel=True, cache=True)
def _count_bins(bits, threads, hist):  # pragma: no cover - compiled
    """``hist[j, bits[r, j] >> 8] += 1`` for every row r of ``bits`` ``[n, N]`` (float16 bit patterns): columns
    split between the threads, each counting into its own int32 block first."""
    n, width = bits.shape
    for t in prange(threads):
        lo, hi = width * t // threads, width * (t + 1) // threads
        w = hi - lo
        counts = np.zeros(w * 256, np.int32)
        for r in range(n):
            row = bits[r, lo:hi]
            for j in range(w):
                counts[j * 256 + (row[j] >> 8)] += 1
        for j in range(w):
            for b in range(256):
                hist[lo + j, b] += counts[j * 256 + b]


def batch_sums(flat: torch.Tensor, flat16: torch.Tensor, hist: torch.Tensor, compiled: bool | None = None
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch's column means, centred power sums and positive counts; its histogram counts are added to
    ``hist`` in place.

    ``flat`` ``[n, N]`` float32 (real tokens only), ``flat16`` the same values in float16, ``hist``
    ``[N, HIST_BINS]`` int64. Returns (mean, sum d^2, sum d^3, sum d^4) in float64 with d = x - mean, and the
    count of x > 0 (int64), per column. ``compiled`` (default: on the CPU) runs two compiled passes over the
    batch, summing in float64 about the float32 mean and then centring exactly; otherwise torch ops in float32
    (a GPU's path; ~4x slower on a CPU, where each whole-batch temporary goes to memory and back).
    """
    n, N = flat.shape
    if compiled is None:
        compiled = not _device_path(flat.device)
    centre = flat.mean(0)
    if not compiled:
        d = flat - centre
        d2 = d * d
        m2 = d2.sum(0).double()
        m3 = torch.linalg.vecdot(d2, d, dim=0).double()
        m4 = torch.linalg.vecdot(d2, d2, dim=0).double()
        binned = hist_bin_index(flat16).to(torch.int32)
        binned += torch.arange(0, N * HIST_BINS, HIST_BINS, dtype=torch.int32, device=hist.device)[None, :]
        # index_add of a broadcast 1, not bincount: on a GPU bincount reads its input's max back (a sync)
        one = torch.ones(1, dtype=hist.dtype, device=hist.device).expand(binned.numel())
        hist.view(-1).index_add_(0, binned.view(-1), one)
        return centre.double(), m2, m3, m4, torch.count_nonzero(flat > 0, dim=0)
    threads = get_num_threads()
    sums = np.zeros((4, N))
    n_pos = np.zeros(N, np.int64)
    _power_sums(flat.contiguous().numpy(), centre.numpy(), threads, sums, n_pos)
    _count_bins(flat16.contiguous().view(torch.int16).numpy().view(np.uint16), threads, hist.numpy())
    # sums about the centre c -> about the mean c + s1 / n (the shift s1 / n is a float32 rounding error)
    s1, s2, s3, s4 = (torch.from_numpy(row) for row in sums)
    shift = s1 / n
    m2 = s2 - s1 * shift
    m3 = s3 - 3 * shift * s2 + 2 * s1 * shift * shift
    m4 = s4 - 4 * shift * s3 + 6 * shift * shift * s2 - 3 * s1 * shift ** 3
    return centre.double() + shift, m2, m3, m4, torch.from_numpy(n_pos)


# ---- deterministic per-(layer, neuron, window) random keys -----------------------------------------------
_M31 = (1 << 31) - 1


def _mix31(x: torch.Tensor) -> torch.Tensor:
    """An integer hash on [0, 2^31) (products stay below 2^62: no int64 overflow)."""
    x = x & _M31
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M31
    x = ((x ^ (x >> 16)) * 0x45D9F3B) & _M31
    return x ^ (x >> 16)


def random_keys(seed: int, layer: int, n_units: int, window_ids: torch.Tensor) -> torch.Tensor:
    """``[len(window_ids), n_units]`` int64 keys, uniform on [0, 2^31); a unit's bottom-k windows by key are a
    uniform random sample of the windows, independent across units and layers."""
    units = torch.arange(n_units, dtype=torch.int64, device=window_ids.device)
    w = _mix31(window_ids.to(torch.int64) * 0x9E3779B1 + seed * 0x85EBCA6B + layer * 0xC2B2AE35)
    return _mix31(w[:, None] + _mix31(units * 0x27D4EB2F + layer)[None, :] * 0x165667B1)


DEVICE_PATH_ON_CPU = False
"""Run the GPU's way of folding batches on the CPU too (the tests set it, to check that path against brute force)."""


def _device_path(device) -> bool:
    """Whether states on ``device`` take the GPU's path: no host sync per layer (a gather, not in-place
    replacement)."""
    return torch.device(device).type != "cpu" or DEVICE_PATH_ON_CPU


@dataclass(frozen=True)
class RealTokens:
    """Where a batch's real tokens are, found once per batch on the host and shared by every layer: a GPU never
    waits on the host to learn them (``acts[mask]`` would sync once per layer)."""

    mask: torch.Tensor
    """``[B, T]`` bool, True for real tokens (on the states' device)."""
    rows: torch.Tensor | None
    """``[n]`` int64 indices of the real tokens in the flattened ``[B * T]`` batch; None when every token is real."""
    token_rows: torch.Tensor
    """``[n]`` the real tokens' rows in the token table."""
    n: int
    in_table: tuple[torch.Tensor, torch.Tensor] | None = None
    """On the GPU's path: (positions among the n real tokens, their table rows) of the tokens in the table. The
    others would all add into the table's last row (discarded), thousands of atomic adds on the same addresses."""

    @staticmethod
    def of(mask: torch.Tensor, token_rows: torch.Tensor, device, table_size: int) -> "RealTokens":
        """From a ``[B, T]`` mask and ``[B, T]`` rows in a token table of ``table_size`` tokens (row
        ``table_size``: not in the table). A mask already on a GPU (a dictionary's positions) is read back here."""
        host = mask.cpu()
        rows = None if bool(host.all()) else host.reshape(-1).nonzero()[:, 0]
        flat_rows = token_rows.reshape(-1).cpu()
        if rows is not None:
            flat_rows = flat_rows.index_select(0, rows)
        in_table = None
        if _device_path(device):
            at = (flat_rows < table_size).nonzero()[:, 0]
            in_table = to_device(at, device), to_device(flat_rows.index_select(0, at), device)
        return RealTokens(to_device(mask, device), None if rows is None else to_device(rows, device),
                          to_device(flat_rows, device), int(rows.numel()) if rows is not None else host.numel(),
                          in_table)


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; from the host to a GPU through pinned memory, so the host does not wait for the GPU's
    queue to drain (a plain ``.to`` from pageable memory synchronises the stream)."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


@dataclass
class LayerState:
    """Mergeable summary of one layer's neurons over a set of windows (all tensors on one device)."""

    layer: int
    n: int
    mean: torch.Tensor  # [N] float64
    m2: torch.Tensor  # [N] float64, sum of squared deviations
    m3: torch.Tensor
    m4: torch.Tensor
    vmin: torch.Tensor  # [N] float32
    vmax: torch.Tensor
    n_pos: torch.Tensor  # [N] int64, tokens with activation > 0
    hist: torch.Tensor  # [N, HIST_BINS] int64
    top_val: torch.Tensor  # [K, N] float32 window max, descending; -inf = empty
    top_wid: torch.Tensor  # [K, N] int64 window id; -1 = empty
    top_acts: torch.Tensor  # [K, N, T] float16 (T last: a unit's record is one contiguous row)
    pool_key: torch.Tensor  # [R, N] int64, ascending; 2^62 = empty
    pool_wid: torch.Tensor  # [R, N]
    pool_max: torch.Tensor  # [R, N] float32
    pool_acts: torch.Tensor  # [R, N, T] float16
    tok_sum: torch.Tensor  # [F + 1, N] float32; row F collects tokens outside the table (discarded)

    @staticmethod
    def empty(layer: int, n_units: int, seq_len: int, top_k: int, pool: int, table_rows: int, device) -> "LayerState":
        f64 = dict(dtype=torch.float64, device=device)
        return LayerState(
            layer=layer, n=0,
            mean=torch.zeros(n_units, **f64), m2=torch.zeros(n_units, **f64),
            m3=torch.zeros(n_units, **f64), m4=torch.zeros(n_units, **f64),
            vmin=torch.full((n_units,), math.inf, device=device), vmax=torch.full((n_units,), -math.inf, device=device),
            n_pos=torch.zeros(n_units, dtype=torch.int64, device=device),
            hist=torch.zeros((n_units, HIST_BINS), dtype=torch.int64, device=device),
            top_val=torch.full((top_k, n_units), -math.inf, device=device),
            top_wid=torch.full((top_k, n_units), -1, dtype=torch.int64, device=device),
            top_acts=torch.zeros((top_k, n_units, seq_len), dtype=torch.float16, device=device),
            pool_key=torch.full((pool, n_units), 1 << 62, dtype=torch.int64, device=device),
            pool_wid=torch.full((pool, n_units), -1, dtype=torch.int64, device=device),
            pool_max=torch.full((pool, n_units), -math.inf, device=device),
            pool_acts=torch.zeros((pool, n_units, seq_len), dtype=torch.float16, device=device),
            tok_sum=torch.zeros((table_rows + 1, n_units), dtype=torch.float32, device=device),
        )

    def add_batch(self, acts: torch.Tensor, real: RealTokens, window_ids: torch.Tensor, top_k: int, pool: int,
                  seed: int) -> None:
        """Fold one batch into this state, in place (equivalent to merging the batch's own state).

        acts ``[B, T, N]`` float32; real: the batch's ``RealTokens`` (on the state's device); window_ids ``[B]``.
        """
        B, T, N = acts.shape
        dev = acts.device
        n = real.n
        if n == 0:
            return
        full = real.rows is None
        flat = acts.reshape(B * T, N)
        if full:
            wmax = acts.amax(1)
        else:
            flat = flat.index_select(0, real.rows)  # [n, N] real tokens only
            pad = ~real.mask[:, :, None]
            wmax = acts.masked_fill(pad, -math.inf).amax(1)
            acts = acts.masked_fill(pad, 0.0)  # padding (possibly NaN) is stored as 0
        acts16 = acts.to(torch.float16)  # [B, T, N]
        flat16 = acts16.view(B * T, N) if full else acts16.view(B * T, N).index_select(0, real.rows)
        # the batch's mean and centred power sums, merged in float64; its histogram counts
        mean, m2, m3, m4, n_pos = batch_sums(flat, flat16, self.hist)
        if self.n == 0:
            self.mean, self.m2, self.m3, self.m4 = mean, m2, m3, m4
        else:
            self.mean, self.m2, self.m3, self.m4 = _merge_moments(
                self.n, self.mean, self.m2, self.m3, self.m4, n, mean, m2, m3, m4)
        self.n += n
        self.n_pos += n_pos
        if real.in_table is None:
            self.tok_sum.index_add_(0, real.token_rows, flat)
        else:
            at, table_rows = real.in_table
            self.tok_sum.index_add_(0, table_rows, flat.index_select(0, at))
        low = flat.amin(0)
        self.vmin = torch.minimum(self.vmin, torch.where(torch.isfinite(low), low, self.vmin))
        self.vmax = torch.maximum(self.vmax, wmax.amax(0))
        acts16 = acts16.transpose(1, 2)  # [B, N, T]: a (window, unit) pair indexes a record row
        window_ids = window_ids.to(dev)
        wid = window_ids[:, None].expand(B, N)
        self.top_val, self.top_wid, self.top_acts = _merge_ranked(
            self.top_val, self.top_wid, self.top_acts, wmax, wid, acts16, top_k, largest=True)
        keys = random_keys(seed, self.layer, N, window_ids)
        self.pool_key, (self.pool_wid, self.pool_max), self.pool_acts = _merge_ranked(
            self.pool_key, (self.pool_wid, self.pool_max), self.pool_acts, keys, (wid, wmax), acts16, pool, largest=False)

    def merge(self, other: "LayerState", top_k: int, pool: int) -> "LayerState":
        """The state of the union of both window sets (windows must be disjoint): ``self``, updated in place (its
        sums are added to rather than allocated anew: a layer's token sums are ~25 MB)."""
        na, nb = self.n, other.n
        if nb == 0:
            return self
        if na == 0:
            self.mean, self.m2, self.m3, self.m4 = other.mean, other.m2, other.m3, other.m4
        else:
            self.mean, self.m2, self.m3, self.m4 = _merge_moments(
                na, self.mean, self.m2, self.m3, self.m4, nb, other.mean, other.m2, other.m3, other.m4)
        self.n = na + nb
        self.vmin, self.vmax = torch.minimum(self.vmin, other.vmin), torch.maximum(self.vmax, other.vmax)
        self.n_pos += other.n_pos
        self.hist += other.hist
        self.tok_sum += other.tok_sum
        self.top_val, self.top_wid, self.top_acts = _merge_ranked(
            self.top_val, self.top_wid, self.top_acts, other.top_val, other.top_wid, other.top_acts, top_k, largest=True)
        self.pool_key, (self.pool_wid, self.pool_max), self.pool_acts = _merge_ranked(
            self.pool_key, (self.pool_wid, self.pool_max), self.pool_acts,
            other.pool_key, (other.pool_wid, other.pool_max), other.pool_acts, pool, largest=False)
        return self


def _merge_moments(na, ma, m2a, m3a, m4a, nb, mb, m2b, m3b, m4b):
    """Pebay (2008) pairwise update of mean and central power sums M2..M4."""
    n = na + nb
    delta = mb - ma
    d_n = delta / n
    mean = ma + d_n * nb
    m2 = m2a + m2b + delta * d_n * na * nb
    m3 = m3a + m3b + delta * d_n * d_n * na * nb * (na - nb) + 3.0 * d_n * (na * m2b - nb * m2a)
    m4 = (m4a + m4b + delta * d_n * d_n * d_n * na * nb * (na * na - na * nb + nb * nb)
          + 6.0 * d_n * d_n * (na * na * m2b + nb * nb * m2a) + 4.0 * d_n * (na * m3b - nb * m3a))
    return mean, m2, m3, m4


def _merge_ranked(key_a, extra_a, acts_a, key_b, extra_b, acts_b, k: int, largest: bool):
    """Keep, per unit (column), the k best entries of ``a`` (k slots, unsorted) and candidates ``b``.

    On the CPU ``a`` is updated by replacement, one compiled pass per column: a candidate that makes the cut takes
    the slot of the entry that drops out, so only the activation rows that actually change are copied (late in a
    long harvest almost none).
    On a GPU (``_device_path``) the k best are gathered into new tensors instead: copying a few MB costs the GPU
    microseconds, while finding the changed slots would make the host wait for it (``any``, ``nonzero``).
    key ``[k, N]``, extra a tensor or tuple of tensors ``[k, N]``, acts ``[k, N, T]``; ``b`` likewise with any
    number of rows. Empty slots hold the worst possible key. Returns the new (key, extra, acts); the inputs
    of ``a`` may be modified in place.
    """
    single = not isinstance(extra_a, tuple)
    extras_a = (extra_a,) if single else extra_a
    extras_b = (extra_b,) if single else extra_b
    ka = key_a.shape[0]
    assert ka == k, "state lists have exactly k slots"
    if _device_path(key_a.device):
        # no host sync (any(), nonzero()): the k best of both gathered into new tensors, a few MB per layer
        keys = torch.cat([key_a, key_b], 0)
        idx = torch.topk(keys, k, dim=0, largest=largest, sorted=False).indices  # [k, N]
        extras = tuple(torch.cat([ea, eb], 0).gather(0, idx) for ea, eb in zip(extras_a, extras_b))
        acts = torch.cat([acts_a, acts_b], 0)
        acts = acts.gather(0, idx[:, :, None].expand(k, *acts.shape[1:]))
        return keys.gather(0, idx), extras[0] if single else extras, acts
    # one compiled pass per column: a candidate better than the column's worst entry takes its slot (the top list's
    # one extra is its window ids; its key, the window max, is written again as the pool's second extra would be)
    wid_a, val_a = (extras_a[0], key_a) if single else extras_a
    wid_b, val_b = (extras_b[0], key_b) if single else extras_b
    _merge_columns(key_a.numpy(), wid_a.numpy(), val_a.numpy(), acts_a.view(torch.int16).numpy(), key_b.numpy(),
                   wid_b.numpy(), val_b.numpy(), acts_b.view(torch.int16).numpy(), largest)
    return key_a, extra_a, acts_a


@njit(cache=True)
def _worst_slot(key, j, largest):  # pragma: no cover - compiled
    w = 0
    for s in range(1, key.shape[0]):
        if (key[s, j] < key[w, j]) if largest else (key[s, j] > key[w, j]):
            w = s
    return w


@njit(parallel=True, cache=True)
def _merge_columns(key_a, wid_a, val_a, acts_a, key_b, wid_b, val_b, acts_b, largest):  # pragma: no cover
    """For every column j: each candidate row i of ``key_b`` that beats the worst of ``key_a[:, j]`` (strictly:
    larger with ``largest``, else smaller) takes that slot, with its window id, value and activation row. The k
    best of both stay, in place (ties at the cut go to the earlier entry). Columns are split between threads."""
    for j in prange(key_a.shape[1]):
        w = _worst_slot(key_a, j, largest)
        for i in range(key_b.shape[0]):
            kb = key_b[i, j]
            if (kb > key_a[w, j]) if largest else (kb < key_a[w, j]):
                key_a[w, j] = kb
                wid_a[w, j] = wid_b[i, j]
                val_a[w, j] = val_b[i, j]
                acts_a[w, j, :] = acts_b[i, j, :]
                w = _worst_slot(key_a, j, largest)


SlotKey = tuple  # (source, layer)


@dataclass
class HarvestState:
    """The running state of a harvest: one LayerState per (source, layer) slot, plus what all slots share."""

    config: HarvestConfig
    layers: dict[SlotKey, LayerState]
    """(source, layer) -> state: 'mlp' for the layer's neurons, a dictionary's source id for its features."""
    tok_count: torch.Tensor  # [F + 1] int64 occurrences of each table token
    shards_done: int = 0
    windows_done: int = 0
    salts: dict[str, int] = field(default_factory=dict)
    """source -> seed offset of its random samples (0 for the neurons, so their samples never change)."""

    @staticmethod
    def empty(config: HarvestConfig, n_units: int | dict[SlotKey, int], table_rows: int, device="cpu",
              salts: dict[str, int] | None = None) -> "HarvestState":
        """``n_units``: units per slot, or one count for the neurons of ``config.layers``."""
        slots = n_units if isinstance(n_units, dict) else {(MLP, layer): n_units for layer in config.layers}
        return HarvestState(
            config=config,
            layers={key: LayerState.empty(key[1], n, config.seq_len, config.top_k, config.pool, table_rows, device)
                    for key, n in slots.items()},
            tok_count=torch.zeros(table_rows + 1, dtype=torch.int64, device=device),
            salts=dict(salts or {}),
        )

    def update(self, acts: dict[SlotKey, torch.Tensor], mask: torch.Tensor, window_ids: torch.Tensor,
               token_rows: torch.Tensor, masks: dict[SlotKey, torch.Tensor] | None = None) -> None:
        """Merge one batch into the running state (``acts``: slot -> ``[B, T, N]``; ``mask``: the real tokens;
        ``masks``: a slot's own positions where they are fewer, e.g. a dictionary's without massive activations)."""
        cfg = self.config
        dev = self.tok_count.device
        table_size = self.tok_count.shape[0] - 1
        real = RealTokens.of(mask, token_rows, dev, table_size)  # once for every slot that reads all real tokens
        window_ids = to_device(window_ids, dev)
        for key, a in acts.items():
            seed = cfg.seed + self.salts.get(key[0], 0)
            own = (masks or {}).get(key)
            self.layers[key].add_batch(a, real if own is None else RealTokens.of(own, token_rows, dev, table_size),
                                       window_ids, cfg.top_k, cfg.pool, seed)
        self.tok_count.index_add_(0, real.token_rows, torch.ones_like(real.token_rows))
        self.windows_done += int(window_ids.shape[0])

    def merge(self, other: "HarvestState") -> "HarvestState":
        cfg = self.config
        return HarvestState(
            config=cfg,
            layers={k: self.layers[k].merge(other.layers[k], cfg.top_k, cfg.pool) for k in self.layers},
            tok_count=self.tok_count + other.tok_count,
            shards_done=self.shards_done + other.shards_done,
            windows_done=self.windows_done + other.windows_done,
            salts=self.salts,
        )


# ---- token table ---------------------------------------------------------------------------------------------

def token_table(token_lists: list[tuple[int, ...]], size: int, min_count: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The table's token ids (most frequent first, at least ``min_count`` occurrences, at most ``size``) and a
    ``[vocab_size]`` map from token id to table row (row ``len(ids)`` for tokens outside the table)."""
    counts = np.bincount(np.fromiter((t for ids in token_lists for t in ids), dtype=np.int64), minlength=vocab_size)
    order = np.argsort(-counts, kind="stable")
    ids = order[counts[order] >= min_count][:size]
    row_of = torch.full((max(vocab_size, len(counts)),), len(ids), dtype=torch.int64)
    row_of[torch.from_numpy(ids)] = torch.arange(len(ids))
    return torch.from_numpy(ids.copy()), row_of


# ---- finalisation ------------------------------------------------------------------------------------------

@dataclass
class TokenMeans:
    """Rows of a layer's token table, as columns: unit, token id, mean activation, occurrences in the corpus."""

    unit: np.ndarray
    token_id: np.ndarray
    mean: np.ndarray
    count: np.ndarray

    def __len__(self) -> int:
        return len(self.unit)


@dataclass
class LayerSummary:
    """Everything the cache stores for one layer, as arrays over units (N) — see ``summarise``."""

    layer: int
    n_tokens: int
    mean: np.ndarray
    std: np.ndarray
    skewness: np.ndarray
    kurtosis: np.ndarray
    vmin: np.ndarray
    vmax: np.ndarray
    frac_active: np.ndarray
    hist: np.ndarray  # [N, HIST_BINS] int64
    top_val: np.ndarray  # [K, N]
    top_wid: np.ndarray  # [K, N], -1 = none
    top_acts: np.ndarray  # [K, N, T] float16
    random_idx: np.ndarray  # [random_k, N] index into the pool, -1 = none
    quantile_idx: np.ndarray  # [bins, per_bin, N] index into the pool, -1 = none
    quantile_boundaries: np.ndarray  # [bins - 1, N]
    pool_wid: np.ndarray  # [R, N]
    pool_max: np.ndarray
    pool_acts: np.ndarray  # [R, N, T] float16
    token_means: "TokenMeans"
    """The rows of the token table worth storing."""
    source: str = MLP


def summarise(state: HarvestState, table_ids: torch.Tensor, tokens_per_unit: int = 20, units_per_token: int = 10) -> list[LayerSummary]:
    cfg = state.config
    out = []
    counts = state.tok_count[:-1]
    counts_host = counts.cpu()
    valid = counts >= cfg.min_token_count
    n_valid = int(valid.sum())
    for (source, layer), st in state.layers.items():
        n = max(st.n, 1)
        # state lists are unsorted slots: order top by value (descending) and the pool by key (ascending)
        cols = torch.arange(st.top_val.shape[1], device=st.top_val.device)[None, :]
        order = torch.argsort(st.top_val, dim=0, descending=True, stable=True)
        top_val, top_wid, top_acts = st.top_val.gather(0, order), st.top_wid.gather(0, order), st.top_acts[order, cols]
        order = torch.argsort(st.pool_key, dim=0, stable=True)
        pool_key, pool_wid = st.pool_key.gather(0, order), st.pool_wid.gather(0, order)
        pool_max, pool_acts = st.pool_max.gather(0, order), st.pool_acts[order, cols]
        var = (st.m2 / n).cpu().numpy()
        with np.errstate(divide="ignore", invalid="ignore"):
            std = np.sqrt(var)
            skew = np.where(var > 0, (st.m3 / n).cpu().numpy() / np.power(var, 1.5), 0.0)
            kurt = np.where(var > 0, (st.m4 / n).cpu().numpy() / (var * var) - 3.0, 0.0)
        pool_key = pool_key.cpu()
        pool_max = pool_max.cpu()
        filled = pool_key < (1 << 62)
        R, N = pool_key.shape
        random_idx = torch.full((cfg.random_k, N), -1, dtype=torch.int64)
        kk = min(cfg.random_k, R)
        random_idx[:kk] = torch.where(filled[:kk], torch.arange(kk)[:, None].expand(kk, N), -1)
        boundaries, quantile_idx = _quantile_samples(pool_max, filled, cfg.quantile_bins, cfg.per_bin)
        # token table: means per (token row, neuron), on the state's device; only the kept rows travel
        means = st.tok_sum[:-1] / counts.clamp(min=1)[:, None].float()
        means[~valid] = -math.inf
        rows = TokenMeans(*(np.zeros(0, dtype) for dtype in (np.int64, np.int64, np.float32, np.int64)))
        if n_valid > 0:
            top_t = torch.topk(means, min(tokens_per_unit, n_valid), dim=0).indices  # [k, N]
            keep = torch.zeros_like(means, dtype=torch.bool)
            keep.scatter_(0, top_t, True)
            top_u = torch.topk(means, min(units_per_token, N), dim=1).indices  # [F, k]
            keep.scatter_(1, top_u, True)
            keep &= valid[:, None]
            r, c = keep.nonzero(as_tuple=True)
            kept, r, c = means[r, c].cpu(), r.cpu(), c.cpu()
            rows = TokenMeans(c.numpy(), table_ids[r].numpy(), kept.numpy(), counts_host[r].numpy())
        out.append(LayerSummary(
            layer=layer, n_tokens=st.n,
            mean=st.mean.cpu().numpy(), std=std, skewness=skew, kurtosis=kurt,
            vmin=st.vmin.cpu().numpy(), vmax=st.vmax.cpu().numpy(), frac_active=(st.n_pos.cpu().numpy() / n),
            hist=st.hist.cpu().numpy(),
            top_val=top_val.cpu().numpy(), top_wid=top_wid.cpu().numpy(), top_acts=top_acts.cpu().numpy(),
            random_idx=random_idx.numpy(), quantile_idx=quantile_idx, quantile_boundaries=boundaries,
            pool_wid=pool_wid.cpu().numpy(), pool_max=pool_max.numpy(), pool_acts=pool_acts.cpu().numpy(),
            token_means=rows, source=source,
        ))
    return out


def _quantile_samples(pool_max: torch.Tensor, filled: torch.Tensor, bins: int, per_bin: int) -> tuple[np.ndarray, np.ndarray]:
    """Bin each unit's random pool by quantiles of its window maxima; keep the first ``per_bin`` (by key)
    of each bin. Returns inner boundaries ``[bins-1, N]`` and pool indices ``[bins, per_bin, N]`` (-1 = none)."""
    R, N = pool_max.shape
    vals = pool_max.double().numpy().copy()
    vals[~filled.numpy()] = np.nan
    qs = np.arange(1, bins) / bins
    # np.nanquantile works column by column (~0.1 ms each): only the columns with empty entries go through it
    full = filled.numpy().all(0)
    boundaries = np.full((bins - 1, N), np.nan)
    if full.any():
        boundaries[:, full] = np.quantile(vals[:, full], qs, axis=0)
    some = ~full & filled.numpy().any(0)
    if some.any():
        boundaries[:, some] = np.nanquantile(vals[:, some], qs, axis=0)
    with np.errstate(invalid="ignore"):
        which = np.sum(vals[None] >= boundaries[:, None, :], axis=0)  # [R, N] bin of each pool entry
    which[np.isnan(vals)] = -1
    idx = np.full((bins, per_bin, N), -1, dtype=np.int64)
    # pool rows are in key order, so the first per_bin of a bin are a random draw
    in_bin = which[None] == np.arange(bins)[:, None, None]  # [bins, R, N]
    rank = torch.from_numpy(in_bin).cumsum(1, dtype=torch.int32).numpy() - 1  # numpy's is ~5x slower on this axis
    b_idx, r_idx, n_idx = np.nonzero(in_bin & (rank < per_bin))
    idx[b_idx, rank[b_idx, r_idx, n_idx], n_idx] = r_idx
    return boundaries, idx


# ---- the streaming loop, with checkpoints ---------------------------------------------------------------

def pad_batch(subject, windows: list, seq_len: int) -> tuple[Encoded, torch.Tensor]:
    """A batch of windows as the harvest runs it: ``subject.encode`` of their tokens, padded to ``seq_len``
    (``real`` is ``[B, seq_len]``), and the window ids ``[B]``."""
    return (subject.encode([list(w.token_ids) for w in windows], length=seq_len),
            torch.tensor([w.window_id for w in windows], dtype=torch.int64))


CHECKPOINT_SHARE = 10
"""A checkpoint is saved after a shard once this many times the last save's duration has passed since it ended."""


def save_checkpoint(state: HarvestState, path: Path, run_id: str) -> None:
    tmp = path.with_suffix(".tmp")
    payload = {"run_id": run_id, "shards_done": state.shards_done, "windows_done": state.windows_done,
               "tok_count": state.tok_count.cpu(), "salts": state.salts,
               "layers": {l: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in vars(st).items()}
                          for l, st in state.layers.items()}}
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint


def load_checkpoint(path: Path, run_id: str, config: HarvestConfig, device) -> HarvestState | None:
    if not path.exists():
        return None
    payload = torch.load(path, map_location=device, weights_only=False)
    if payload.get("run_id") != run_id:
        return None
    # slots are (source, layer); checkpoints written before units had sources are keyed by the layer alone
    layers = {(tuple(k) if isinstance(k, tuple) else (MLP, int(k))): LayerState(**d)
              for k, d in payload["layers"].items()}
    return HarvestState(config=config, layers=layers, tok_count=payload["tok_count"].to(device),
                        shards_done=payload["shards_done"], windows_done=payload["windows_done"],
                        salts=payload.get("salts", {}))


@dataclass
class ShardTask:
    """Harvest one shard of windows from an empty state (an executor task: the shards' states are merged in order
    by the driver, so the result is the same on one process or many)."""

    model: object
    """analysis.executor.ModelHandle"""
    config: HarvestConfig
    readers: list
    row_of: torch.Tensor
    """token id -> row of the token table."""
    table_rows: int
    slots: dict
    salts: dict
    device: str = "cpu"
    to_cpu: bool = False
    """Return the state on the CPU (a worker's result travels to the driver)."""
    on_tokens: object = None
    """Called with each batch's real token count (in-process progress; never pickled)."""

    def __getstate__(self):
        return {**vars(self), "on_tokens": None}

    def __call__(self, shard: list) -> HarvestState:
        from analysis.activations import site_activations

        subject, config, device = self.model.get(), self.config, self.device
        readers = [r if r.sae is None else replace(r, sae=r.sae.to(device)) for r in self.readers]
        sites = sorted({(r.layer, r.site) for r in readers})
        state = HarvestState.empty(config, self.slots, self.table_rows, device, self.salts)
        batch_size = config.batch_for(device)
        for b in range(0, len(shard), batch_size):
            batch = shard[b : b + batch_size]
            enc, wids = pad_batch(subject, batch, config.seq_len)
            n = enc.n_prefix  # the BOS column is run but not recorded
            site_acts = site_activations(subject, enc.input_ids, enc.attention_mask, sites)
            site_acts = {key: a[:, n:] for key, a in site_acts.items()}
            real = enc.real  # on the host: RealTokens finds the real tokens there, so a GPU never waits
            acts, masks = {}, {}
            with torch.inference_mode():
                for r in readers:
                    x = site_acts[(r.layer, r.site)]
                    acts[r.key] = r.units(x)
                    if r.sae is not None:
                        masks[r.key] = r.positions(x, real.to(device))
            state.update(acts, real, wids, self.row_of[enc.input_ids[:, n:]], masks)
            if self.on_tokens is not None:
                self.on_tokens(int(real.sum()))
        state.shards_done = 1
        return _to(state, "cpu") if self.to_cpu else state


def run_harvest(subject, windows: list, config: HarvestConfig, checkpoint: Path | None = None,
                run_id: str = "", device: str = "cpu", progress: Progress | bool = True, readers: list | None = None,
                executor=None):
    """Stream ``windows`` through the model; return (final HarvestState, token table ids).

    ``readers`` (analysis.activations.Reader) say which units to harvest: by default the neurons of
    ``config.layers``; a dictionary's reader adds its features, read in the same forward pass.
    Each shard of ``config.shard_windows`` windows is harvested by a ``ShardTask`` (on ``executor``: this process
    by default, or Ray workers) and merged into the running state in shard order.
    With ``checkpoint``, the state is saved after shards (``CHECKPOINT_SHARE``) and a matching checkpoint is
    resumed from. Interrupting (Ctrl-C, a crash) loses at most the shards since the last save.
    """
    from analysis.activations import neuron_reader
    from analysis.executor import LOCAL, ModelHandle

    executor = executor or LOCAL
    info = subject.info
    readers = readers if readers is not None else [neuron_reader(layer) for layer in config.layers]
    vocab_size = max(len(subject.tokenizer), max((max(w.token_ids) for w in windows), default=0) + 1)
    table_ids, row_of = token_table([w.token_ids for w in windows], config.token_table, config.min_token_count, vocab_size)
    slots = {r.key: (info.d_mlp if r.sae is None else r.sae.d_sae) for r in readers}
    salts = {r.source: r.sae.salt for r in readers if r.sae is not None}
    # no empty running state: the first shard's state becomes it (an empty state is ~40 MB per layer to zero)
    state = load_checkpoint(checkpoint, run_id, config, device) if checkpoint else None
    shards_done = state.shards_done if state is not None else 0
    shards = [windows[i : i + config.shard_windows] for i in range(0, len(windows), config.shard_windows)]
    layers = sorted({r.layer for r in readers})
    done_tokens = sum(len(w.token_ids) for sh in shards[:shards_done] for w in sh)
    total = sum(len(w.token_ids) for w in windows)
    bars = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    bar = bars.bar(total, f"harvest {info.name} L{layers[0]}-{layers[-1]}" if len(layers) > 1 else
                   f"harvest {info.name} L{layers[0]}", unit="tok", initial=done_tokens, unit_scale=True, smoothing=0.05)
    task = ShardTask(ModelHandle(info.name, info.model_id, device, loaded=subject if executor.local else None),
                     config, readers, row_of, len(table_ids), slots, salts, device, not executor.local,
                     on_tokens=bar.update if executor.local else None)
    saved_at, save_took = -math.inf, 0.0
    try:
        todo = shards[shards_done:]
        for shard, shard_state in zip(todo, executor.map(task, todo)):
            shard_state = _to(shard_state, device)
            state = shard_state if state is None else state.merge(shard_state)
            if not executor.local:
                bar.update(sum(len(w.token_ids) for w in shard))
            # saving takes at most ~1/CHECKPOINT_SHARE of the time: every shard on a CPU (a shard is minutes, a save
            # seconds); on a GPU, whose shards take seconds, every few shards
            now = time.monotonic()
            if (checkpoint is not None and state.shards_done < len(shards)
                    and now - saved_at >= CHECKPOINT_SHARE * save_took):
                save_checkpoint(state, checkpoint, run_id)
                saved_at = time.monotonic()
                save_took = saved_at - now
    finally:
        bar.close()
    if state is None:  # no windows
        state = HarvestState.empty(config, slots, len(table_ids), device, salts)
    return state, table_ids


def _to(state: HarvestState, device) -> HarvestState:
    """A state from a worker on the driver's device."""
    if state.tok_count.device == torch.device(device):
        return state
    for st in state.layers.values():
        for k, v in vars(st).items():
            if torch.is_tensor(v):
                setattr(st, k, v.to(device))
    state.tok_count = state.tok_count.to(device)
    return state
