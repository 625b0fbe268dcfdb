"""From a finished state to what the store writes: ``summarise`` gives a ``LayerSummary`` per slot.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from analysis.harvest.state import HarvestState
from analysis.types import LayerSummary, TokenMeans

def summarise(state: HarvestState, table_ids: torch.Tensor, tokens_per_unit: int = 20, units_per_token: int = 10) -> list[LayerSummary]:
    """Every slot's ``LayerSummary``."""
    return [summarise_slot(state, key, table_ids, tokens_per_unit, units_per_token) for key in state.layers]


def summarise_slot(state: HarvestState, key: tuple, table_ids: torch.Tensor, tokens_per_unit: int = 20,
                   units_per_token: int = 10) -> LayerSummary:
    """One slot's ``LayerSummary`` (a pass writes its slots one at a time, each freed once written)."""
    cfg = state.config
    counts = state.tok_count[:-1]
    counts_host = counts.cpu()
    valid = counts >= cfg.min_token_count
    n_valid = int(valid.sum())
    (source, layer), st = key, state.layers[key]
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
    return LayerSummary(
        layer=layer, n_tokens=st.n,
        mean=st.mean.cpu().numpy(), std=std, skewness=skew, kurtosis=kurt,
        vmin=st.vmin.cpu().numpy(), vmax=st.vmax.cpu().numpy(), frac_active=(st.n_pos.cpu().numpy() / n),
        hist=st.hist.cpu().numpy(),
        top_val=top_val.cpu().numpy(), top_wid=top_wid.cpu().numpy(), top_acts=top_acts.cpu().numpy(),
        random_idx=random_idx.numpy(), quantile_idx=quantile_idx, quantile_boundaries=boundaries,
        pool_wid=pool_wid.cpu().numpy(), pool_max=pool_max.numpy(), pool_acts=pool_acts.cpu().numpy(),
        token_means=rows, source=source,
    )


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
