"""The harvest's arithmetic: a batch's per-unit sums and histogram, per-(layer, unit, window) random keys, and
the merges of top lists and pools (compiled with numba on the CPU, gathers on a GPU).
"""

from __future__ import annotations

import numpy as np
import torch
from numba import get_num_threads, njit, prange

from analysis.histogram import HIST_BINS

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
