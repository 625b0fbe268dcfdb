"""A harvest's plan (memory, disk, time; its passes) and the loop that runs the passes, in this process or on an
executor's workers. The memory model itself is ``analysis.harvest.memory``."""

from __future__ import annotations

import shutil
from collections import deque
from dataclasses import replace
from pathlib import Path

from analysis.harvest.memory import HarvestPlan, Pass, UnitBytes, budget_of, pass_peak, split_passes
from analysis.jobs.specs import fmt_layers
from analysis.progress import Progress, fmt_bytes, fmt_seconds
from analysis.types import UserError


def disk_per_unit(cfg) -> float:
    """Database bytes per harvested unit: its records (top, random and quantile windows, float16 at seq_len) with
    their sample rows, and its statistics. An upper bound: records shared by samples are stored once (the demo
    harvest's 8,900 bytes per neuron vs 12,800 here)."""
    return (cfg.top_k + cfg.random_k + cfg.quantile_bins * cfg.per_bin) * (2 * cfg.seq_len + 40) + 200


def plan_harvest(job, cfg, slots: dict, table_rows: int, n_tokens: int, workers: int, written: set,
                 begun: list, db: Path, forward: float = 0.0, base: float | None = None) -> HarvestPlan:
    """Passes over the slots not yet written that fit the budget (passes begun by an earlier try first, as they
    were: their checkpoints are found), with the estimates; refuses (UserError) when one slot cannot fit or the
    disk cannot hold the result. ``workers`` > 1 (a Ray cluster): every worker runs a pass at once, each in
    ``budget / workers``, and there are at least as many passes as workers. ``base``: the process's memory before
    ``forward``, the forward pass's own bytes (``probe_forward``), which is added to it."""
    from analysis.jobs.build.plan import PROJECT_GPU, PROJECT_VM, SMOLLM2_NEURONS

    base, budget, basis = worker_budget(job, workers, base, forward)
    notes = [f"  {workers} workers: each pass in 1/{workers} of the budget above the base"] if workers > 1 else []
    u = UnitBytes.of(cfg, table_rows, cfg.batch_for(job.device))
    pending = {k: n for k, n in slots.items() if k not in written}
    passes, taken = [], set()
    for keys in begun:  # as they were, while they still fit
        keys = [k for k in keys if k in slots]
        if any(k in pending for k in keys) and not taken & set(keys) and pass_peak(
                {k: slots[k] for k in keys}, u, base) <= budget:
            passes.append(Pass(tuple(keys), sum(slots[k] for k in keys), pass_peak({k: slots[k] for k in keys}, u, base)))
            taken |= set(keys)
    rest = {k: n for k, n in pending.items() if k not in taken}
    if rest:
        passes += split_passes(rest, u, base, budget, at_least=max(1, workers - len(passes)) if workers > 1 else 1)
    units = sum(pending.values())
    gpu = str(job.device).startswith("cuda")
    per_token = (PROJECT_GPU if gpu else PROJECT_VM)["harvest"] / SMOLLM2_NEURONS
    seconds = n_tokens * units * per_token / max(1, min(workers, len(passes)))
    disk = units * disk_per_unit(cfg) + max((p.units for p in passes), default=0) * u.state
    free = shutil.disk_usage(_existing(Path(db).parent)).free
    if disk > free:
        raise UserError(f"not enough disk for this harvest: it needs ≈ {fmt_bytes(disk)} (the database's records and "
                        f"a pass's checkpoint) and {Path(db).parent} has {fmt_bytes(free)} free. Harvest fewer "
                        "--layers or --max-tokens, lower --top-k or --seq-len, or use a --db on a larger disk")
    return HarvestPlan(u, base, forward, budget, basis, passes, seconds,
                       f"{units:,} units x {n_tokens:,} tokens at the project {'H200' if gpu else 'VM'}'s measured "
                       "rate per unit, extrapolated", disk, str(job.device), workers, notes)


def worker_budget(job, workers: int, base: float | None = None, forward: float = 0.0) -> tuple[float, float, str]:
    """(base + forward, the budget of one pass, where the budget comes from): with ``workers`` > 1 every worker runs
    a pass at once, so each gets 1/workers of the budget above the base."""
    base, budget, basis = budget_of(job.max_memory, job.device, base)
    base += forward
    return base, (budget if workers <= 1 else base + (budget - base) / workers), basis


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def memory_line(job, info, layers: list[int], workers: int = 1) -> str:
    """The build plan's line on the harvest's memory, from the model's shape (a token table of its full size: the
    harvest's own plan, printed when it starts, knows the corpus's)."""
    from analysis.types import MLP

    cfg = job.config
    base, budget, basis = worker_budget(job, workers)
    u = UnitBytes.of(cfg, cfg.token_table, cfg.batch_for(job.device))
    try:
        passes = split_passes({(MLP, layer): info.d_mlp for layer in layers}, u, base, budget)
    except UserError as exc:
        return f"  harvest memory: refused: {exc}"
    return (f"  harvest memory ≈ {fmt_bytes(max(p.peak for p in passes))} at most in {len(passes)} pass"
            f"{'es' if len(passes) != 1 else ''} of layers ({fmt_bytes(u.state)} per unit; budget "
            f"{fmt_bytes(budget)}: {basis}; the forward pass's own memory not counted: the harvest measures it)")


def describe_plan(plan: HarvestPlan) -> str:
    u = plan.per_unit
    where = "GPU memory" if plan.device.startswith("cuda") else "memory"
    n = len(plan.passes)
    lines = [f"plan: {sum(p.units for p in plan.passes):,} units in {n} pass{'es' if n != 1 else ''}; peak {where} "
             f"≈ {fmt_bytes(plan.peak)} of a {fmt_bytes(plan.budget)} budget ({plan.budget_basis})",
             f"  per unit: state {fmt_bytes(u.state)} (top {fmt_bytes(u.top)}, pool {fmt_bytes(u.pool)}, histogram "
             f"{fmt_bytes(u.histogram)}, moments {u.moments} B, token sums {fmt_bytes(u.token_sums)}), a batch's "
             f"activations {fmt_bytes(u.held)}; base {fmt_bytes(plan.base)} (the process with the model, and the "
             f"forward pass's own {fmt_bytes(plan.forward)}, measured)",
             f"  disk ≈ {fmt_bytes(plan.disk)}; time ≈ {fmt_seconds(plan.seconds)} ({plan.seconds_basis})"]
    if n > 1:
        for i, p in enumerate(plan.passes):
            by_source: dict[str, list[int]] = {}
            for source, layer in p.slots:
                by_source.setdefault(source, []).append(layer)
            what = ", ".join(f"{s} L{fmt_layers(ls)}" for s, ls in by_source.items())
            lines.append(f"  pass {i + 1}: {what} ({p.units:,} units, ≈ {fmt_bytes(p.peak)})")
    return "\n".join(lines + plan.notes)


def out_of_memory(exc: BaseException) -> bool:
    """A GPU out of memory, or the host's allocator refusing."""
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def run_passes(task, plan: HarvestPlan, slot_units: dict, executor, progress: Progress, name: str):
    """Yield (pass, its state) for every pass of ``plan``. In this process a pass that runs out of memory is
    retried smaller, and says so: split in two, or (one slot) at half the batch; on an executor's workers the
    passes run side by side, a worker's task that dies is run again (``analysis.executor``)."""
    import torch

    queue = deque(plan.passes)
    total = len(queue)
    if executor is not None and not executor.local:
        bar = progress.bar(total, f"harvest {name}: {total} passes on {executor.workers} workers", unit="pass")
        try:
            for p, state in zip(plan.passes, executor.map(task, [{k: slot_units[k] for k in p.slots}
                                                                 for p in plan.passes])):
                bar.update(1)
                yield p, state
        finally:
            bar.close()
        return
    done = 0
    while queue:
        p = queue.popleft()
        layers = sorted({k[1] for k in p.slots})
        bar = progress.bar(sum(len(w.token_ids) for w in task.windows),
                           f"harvest {name} " + (f"pass {done + 1}/{done + 1 + len(queue)} " if total > 1 else "")
                           + f"L{fmt_layers(layers)}", unit="tok", unit_scale=True, smoothing=0.05)
        task.on_tokens = bar.update
        try:
            state = task({k: slot_units[k] for k in p.slots})
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not out_of_memory(exc):
                raise
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if len(p.slots) > 1:
                half = len(p.slots) // 2
                parts = [p.slots[:half], p.slots[half:]]
                queue.extendleft(reversed([Pass(s, sum(slot_units[k] for k in s), p.peak) for s in parts]))
                progress.note(f"pass {done + 1} ran out of memory: split into two passes of "
                              f"{' and '.join(str(len(s)) for s in parts)} layers")
            else:
                batch = task.config.batch_for(task.device)
                if batch <= 1:
                    raise UserError(f"one layer runs out of memory at a batch of one window ({exc}); lower "
                                    "--top-k, --seq-len or --token-table") from exc
                task.config = replace(task.config, batch_size=batch // 2)
                queue.appendleft(p)
                progress.note(f"pass {done + 1} ran out of memory: retried at a batch of {batch // 2} windows")
            continue
        finally:
            bar.close()
        done += 1
        if task.resumed:
            progress.note(f"pass {done}: resumed from its checkpoint after {task.resumed:,} of {len(task.windows):,} "
                          "windows")
        yield p, state
