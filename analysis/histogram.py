"""The fixed histogram grid of unit activations: the float16 high byte is the bin (numpy only, no torch).

A float16's high byte holds its sign, its 5 exponent bits and its top 2 mantissa bits: read as an integer it
names a log-scale bin (4 linear sub-bins per octave, from 2^-14 to 65504, subnormals in the lowest bins).
The harvest already makes the float16 copy for storage, so binning costs one byte read per value
(``analysis.harvest.kernels.hist_bin_index``). The grid never depends on the data, so histograms merge by addition.
"""

from __future__ import annotations

import numpy as np

HIST_BINS = 256
"""Bins per unit: one per value of the float16 high byte."""


def _hist_edges() -> np.ndarray:
    """Lower and upper magnitude edge of each of the 256 bins (by byte value; sign from bit 7), ``[256, 2]``."""
    lo, hi = np.zeros(HIST_BINS), np.zeros(HIST_BINS)
    for b in range(HIST_BINS):
        e5, sub = (b >> 2) & 31, b & 3
        if e5 == 0:  # subnormals: linear in [0, 2^-14)
            lo[b], hi[b] = sub * 2.0**-16, (sub + 1) * 2.0**-16
        elif e5 == 31:  # inf / nan: above the float16 range
            lo[b], hi[b] = 65504.0, np.inf
        else:
            base = 2.0 ** (e5 - 15)
            lo[b], hi[b] = base * (1 + sub / 4), base * (1 + (sub + 1) / 4)
    sign = np.where(np.arange(HIST_BINS) >= 128, -1.0, 1.0)
    return np.stack([sign * lo, sign * hi], axis=1)


HIST_BIN_EDGES = _hist_edges()
"""``[256, 2]``: the two edges of each bin; for negative bins the first edge is the one nearer 0."""


def hist_order() -> np.ndarray:
    """``[256]`` bin indices sorted from the most negative bin to the most positive (for plotting)."""
    mids = HIST_BIN_EDGES.mean(axis=1)
    mids = np.where(np.isfinite(mids), mids, np.sign(HIST_BIN_EDGES[:, 0]) * 1e6)
    return np.argsort(mids, kind="stable")
