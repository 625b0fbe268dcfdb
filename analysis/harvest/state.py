"""The harvest's streaming state: ``LayerState`` per slot (fold a batch in) and
``HarvestState`` over all slots, plus the token table whose per-token sums it keeps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from analysis.config import HarvestConfig
from analysis.harvest.kernels import _device_path, _merge_moments, _merge_ranked, batch_sums, random_keys
from analysis.histogram import HIST_BINS
from analysis.types import MLP

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


SlotKey = tuple  # (source, layer)


@dataclass
class HarvestState:
    """The running state of a harvest: one LayerState per (source, layer) slot, plus what all slots share."""

    config: HarvestConfig
    layers: dict[SlotKey, LayerState]
    """(source, layer) -> state: 'mlp' for the layer's neurons, a dictionary's source id for its features."""
    tok_count: torch.Tensor  # [F + 1] int64 occurrences of each table token
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
