"""The streaming loop: windows in batches through the model, shards on an executor, checkpoints to resume.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from analysis.config import HarvestConfig
from analysis.harvest.state import HarvestState, LayerState, token_table
from analysis.models import Encoded
from analysis.progress import Progress
from analysis.types import MLP

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
