"""The streaming loop: a pass (some slots) folds every window, batch by batch, into one running state, with
checkpoints to resume; passes run on an executor.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from analysis.config import HarvestConfig
from analysis.harvest.state import HarvestState, LayerState, token_table
from analysis.models import Encoded
from analysis.progress import Progress

# ---- the streaming loop, with checkpoints ---------------------------------------------------------------

def pad_batch(subject, windows: list, seq_len: int) -> tuple[Encoded, torch.Tensor]:
    """A batch of windows as the harvest runs it: ``subject.encode`` of their tokens, padded to ``seq_len``
    (``real`` is ``[B, seq_len]``), and the window ids ``[B]``."""
    return (subject.encode([list(w.token_ids) for w in windows], length=seq_len),
            torch.tensor([w.window_id for w in windows], dtype=torch.int64))


CHECKPOINT_SHARE = 10
"""A checkpoint is saved at a batch's end once ``checkpoint_seconds`` and this many times the last save's duration
have passed since it ended: saving takes at most ~1/CHECKPOINT_SHARE of the time."""


def save_checkpoint(state: HarvestState, path: Path, run_id: str) -> None:
    """Save ``state`` at ``path`` (atomically), and its slots beside it (``begun_passes`` reads them)."""
    side = path.with_suffix(".slots.json")
    if not side.exists():
        side.write_text(json.dumps(sorted(state.layers)))
    tmp = path.with_suffix(".tmp")
    payload = {"run_id": run_id, "windows_done": state.windows_done, "tok_count": state.tok_count.cpu(),
               "salts": state.salts, "slots": sorted(state.layers),
               "layers": {l: {k: (v.cpu() if torch.is_tensor(v) else v) for k, v in vars(st).items()}
                          for l, st in state.layers.items()}}
    torch.save(payload, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint


def load_checkpoint(path: Path, run_id: str, config: HarvestConfig, device) -> HarvestState | None:
    """The state saved at ``path`` if it is of this run (and pass), else None."""
    if path is None or not path.exists():
        return None
    try:
        payload = torch.load(path, map_location=device, weights_only=False)
    except Exception:  # a checkpoint cut short (a full disk): harvest again from the start
        return None
    if payload.get("run_id") != run_id:
        return None
    layers = {tuple(k): LayerState(**d) for k, d in payload["layers"].items()}
    return HarvestState(config=config, layers=layers, tok_count=payload["tok_count"].to(device),
                        windows_done=payload["windows_done"], salts=payload.get("salts", {}))


@dataclass
class PassTask:
    """Harvest one pass (some slots: (source, layer) -> units) over every window, folding each batch into one
    running state, and return it (an executor task: this process, or a Ray worker, which returns it on the CPU).

    With ``checkpoint`` (a folder), the state is saved there every ``config.checkpoint_seconds`` at a batch's end,
    and a pass that finds its own checkpoint resumes after the windows it holds: the same batches are folded in
    the same order, so a resumed pass's state equals an uninterrupted one's."""

    model: object
    """analysis.executor.ModelHandle"""
    config: HarvestConfig
    windows: list
    readers: list
    row_of: torch.Tensor
    """token id -> row of the token table."""
    table_rows: int
    salts: dict
    device: str = "cpu"
    checkpoint: Path | None = None
    run_id: str = ""
    """The job's checkpoint id; a pass's checkpoint is named by it and the pass's slots."""
    to_cpu: bool = False
    on_tokens: object = None
    """Called with each batch's real token count (in-process progress; never pickled)."""
    resumed: int = 0
    """Windows the last pass found in its checkpoint (in this process)."""

    def __getstate__(self):
        return {**vars(self), "on_tokens": None}

    def checkpoint_of(self, slots) -> tuple[Path | None, str]:
        """(path, id) of the checkpoint of the pass over ``slots``."""
        return pass_checkpoint(self.checkpoint, self.run_id, slots)

    def __call__(self, slots: dict) -> HarvestState:
        from analysis.activations import site_activations

        subject, config, device = self.model.get(), self.config, self.device
        readers = [r if r.sae is None else replace(r, sae=r.sae.to(device)) for r in self.readers if r.key in slots]
        sites = sorted({(r.layer, r.site) for r in readers})
        path, ckpt_id = self.checkpoint_of(slots)
        state = load_checkpoint(path, ckpt_id, config, device)
        self.resumed = 0 if state is None else state.windows_done
        if state is None:
            state = HarvestState.empty(config, dict(slots), self.table_rows, device, self.salts)
        elif self.on_tokens is not None:
            self.on_tokens(sum(len(w.token_ids) for w in self.windows[: state.windows_done]))
        batch_size = config.batch_for(device)
        started = saved_at = time.monotonic()
        save_took, saved_windows = 0.0, state.windows_done
        for b in range(state.windows_done, len(self.windows), batch_size):
            batch = self.windows[b : b + batch_size]
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
            del site_acts
            state.update(acts, real, wids, self.row_of[enc.input_ids[:, n:]], masks)
            del acts, masks
            if self.on_tokens is not None:
                self.on_tokens(int(real.sum()))
            now = time.monotonic()
            if (path is not None and state.windows_done < len(self.windows)
                    and now - saved_at >= max(config.checkpoint_seconds, CHECKPOINT_SHARE * save_took)):
                save_checkpoint(state, path, ckpt_id)
                saved_at = time.monotonic()
                save_took, saved_windows = saved_at - now, state.windows_done
        # a pass that took a checkpoint interval is saved whole before its slots are written: a writer killed in
        # the write finds it and harvests nothing again
        if (path is not None and saved_windows < state.windows_done
                and time.monotonic() - started >= config.checkpoint_seconds):
            save_checkpoint(state, path, ckpt_id)
        return _to(state, "cpu") if self.to_cpu else state


def pass_checkpoint(folder: Path | None, run_id: str, slots) -> tuple[Path | None, str]:
    """(path, id) of the checkpoint of a pass over ``slots`` in ``folder``; beside it ``<id>.slots.json`` lists
    them, so a rerun under another plan still finds the passes it had begun (``begun_passes``)."""
    if folder is None:
        return None, ""
    keys = sorted(tuple(k) for k in slots)
    pass_id = f"{run_id}.{hashlib.sha256(repr(keys).encode()).hexdigest()[:12]}"
    return Path(folder) / f"{pass_id}.pt", pass_id


def begun_passes(folder: Path, run_id: str) -> list[list[tuple]]:
    """The slot lists of this run's passes that have a checkpoint in ``folder``."""
    out = []
    for side in sorted(Path(folder).glob(f"{run_id}.*.slots.json")):
        if side.with_suffix("").with_suffix(".pt").exists():
            out.append([tuple(k) for k in json.loads(side.read_text())])
    return out


def run_harvest(subject, windows: list, config: HarvestConfig, checkpoint: Path | None = None,
                run_id: str = "", device: str = "cpu", progress: Progress | bool = True, readers: list | None = None):
    """Stream ``windows`` through the model in one pass; return (its HarvestState, the token table's ids).

    ``readers`` (analysis.activations.Reader) say which units to harvest: by default the neurons of
    ``config.layers``; a dictionary's reader adds its features, read in the same forward pass. With
    ``checkpoint`` (a folder) the pass checkpoints there and resumes (``PassTask``). The harvest job plans passes
    that fit a memory budget and writes each slot as it is done; this is one pass, in this process.
    """
    from analysis.activations import neuron_reader
    from analysis.executor import ModelHandle

    info = subject.info
    readers = readers if readers is not None else [neuron_reader(layer) for layer in config.layers]
    table_ids, row_of = token_table_of(subject, windows, config)
    slots = {r.key: (info.d_mlp if r.sae is None else r.sae.d_sae) for r in readers}
    bars = progress if isinstance(progress, Progress) else Progress(enabled=progress)
    bar = bars.bar(sum(len(w.token_ids) for w in windows), f"harvest {info.name}", unit="tok", unit_scale=True,
                   smoothing=0.05)
    task = PassTask(ModelHandle(info.name, info.model_id, device, loaded=subject), config, windows, readers, row_of,
                    len(table_ids), salts_of(readers), device, checkpoint, run_id, on_tokens=bar.update)
    try:
        state = task(slots)
    finally:
        bar.close()
    return state, table_ids


def salts_of(readers: list) -> dict[str, int]:
    """source -> the seed offset of its random samples (dictionaries only; the neurons' is 0)."""
    return {r.source: r.sae.salt for r in readers if r.sae is not None}


def token_table_of(subject, windows: list, config: HarvestConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """The token table of a harvest's windows (``token_table``) over the model's vocabulary."""
    vocab_size = max(len(subject.tokenizer), max((max(w.token_ids) for w in windows), default=0) + 1)
    return token_table([w.token_ids for w in windows], config.token_table, config.min_token_count, vocab_size)


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
