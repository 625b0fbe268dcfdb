"""The harvest's memory model: its state bytes per unit equal the tensors a state allocates; passes fit the budget,
in order, as many as the workers; a layer that cannot fit is refused with its numbers."""

from __future__ import annotations

import pytest
import torch

from analysis.config import HarvestConfig
from analysis.harvest.memory import UnitBytes, parse_bytes, pass_peak, split_passes
from analysis.harvest.state import LayerState
from analysis.types import UserError


@pytest.mark.parametrize("cfg", [HarvestConfig(), HarvestConfig(seq_len=128, top_k=60, pool=20)])
def test_state_bytes_per_unit_are_the_tensors_a_state_allocates(cfg):
    n_units, table_rows = 40, 123
    st = LayerState.empty(0, n_units, cfg.seq_len, cfg.top_k, cfg.pool, table_rows, "cpu")
    allocated = sum(t.numel() * t.element_size() for t in vars(st).values() if torch.is_tensor(t))
    assert UnitBytes.of(cfg, table_rows, batch=32).state * n_units == allocated


def test_passes_fit_the_budget_in_order_and_spread_over_workers():
    u = UnitBytes.of(HarvestConfig(), 4096, 32)
    slots = {("mlp", layer): 1000 for layer in range(10)}
    one = pass_peak({("mlp", 0): 1000}, u, 1e9)
    budget = pass_peak({k: 1000 for k in list(slots)[:3]}, u, 1e9)  # exactly three layers
    passes = split_passes(slots, u, 1e9, budget)
    assert [len(p.slots) for p in passes] == [3, 3, 3, 1]
    assert [k for p in passes for k in p.slots] == list(slots)
    assert all(p.peak <= budget for p in passes) and passes[-1].peak == one
    assert len(split_passes(slots, u, 1e9, 1e15)) == 1
    spread = split_passes(slots, u, 1e9, 1e15, at_least=4)
    assert [len(p.slots) for p in spread] == [3, 3, 3, 1] and len(split_passes(slots, u, 1e9, budget, 2)) == 4
    with pytest.raises(UserError, match=r"mlp layer 0 \(1,000 units\) needs .* Lower --top-k"):
        split_passes(slots, u, 1e9, one - 1)


def test_sizes_read_as_decimal_units():
    assert parse_bytes("12G") == 12e9 and parse_bytes("800M") == 800e6 and parse_bytes("2.5GB") == 2.5e9
    assert parse_bytes("1e9") == 1e9 and parse_bytes("64k") == 64e3
    with pytest.raises(UserError, match="--max-memory"):
        parse_bytes("lots")
