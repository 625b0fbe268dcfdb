"""A background build as the viewer shows it: its progress on the Cache page, and a note on any page whose lens
the running build has not written yet (``analysis.jobs.build.status.read_status``: a small JSON file beside the
database, read on every call, as it changes while the build goes)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from analysis.progress import fmt_seconds
from analysis.jobs.build.status import read_status

LENS_NAMES = {"harvest": "harvest", "baselines": "token-lookup baselines", "topics": "topics", "n2g": "graphs",
              "effects": "ablation effects", "explain": "explanations", "score": "explanation scores"}


def still_building(db: Path, lens: str, unit) -> bool:
    """Say so and return True when the running build is still to write ``lens`` for ``unit`` (an MLP neuron)."""
    from analysis.types import MLP

    status, layer = read_status(db), unit.layer
    if status is None or unit.source != MLP or not status.pending(lens, layer, unit.index):
        return False
    left = status.left_s()
    st.info(f"The {LENS_NAMES[lens]} of layer {layer} are still being built by the build running in the background"
            f" (now: {status.where() or 'starting'}" + (f"; ≈ {fmt_seconds(left)} left" if left else "") +
            "). This fills in when it gets here; its progress is on the Cache page.", icon=":material/hourglass:")
    return True


def coming(db: Path, unit) -> set[str]:
    """The lenses the running build is still to write for ``unit`` (an MLP neuron; empty when no build runs)."""
    from analysis.types import MLP

    status = read_status(db)
    if status is None or unit.source != MLP or not status.running:
        return set()
    return {s.lens for s in status.stages if status.pending(s.lens, unit.layer, unit.index)}


def pending_layers(db: Path, lens: str) -> list[int]:
    """The layers of ``lens`` the running build has still to write (empty when no build runs)."""
    status = read_status(db)
    if status is None or not status.running:
        return []
    return sorted({layer for s in status.stages if s.lens == lens for layer in s.layers if layer not in s.done})


def log_file(db: Path) -> Path:
    """Where `make demo` writes its background steps' output (their process id: ``<db>.build.pid``)."""
    return Path(str(db) + ".build.log")


def background_pid(db: Path) -> int | None:
    """The process of `make demo`'s background steps while it runs, else None."""
    try:
        pid = int(Path(str(db) + ".build.pid").read_text())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


def build_panel(db: Path) -> None:
    """The last build's progress, and `make demo`'s background steps after it; nothing when none ran."""
    status, pid = read_status(db), background_pid(db)
    if status is None and pid is None:
        return
    st.subheader("Build")
    if status is not None and status.running:
        left = status.left_s()
        st.progress(status.fraction, text=f"running (process {status.pid}): {status.where() or 'starting'} · "
                    f"{status.fraction:.0%} of the plan" + (f" · ≈ {fmt_seconds(left)} left" if left else ""))
    elif pid is not None:  # between or after the builds of `make demo`: its SAE, comparison, vectors
        st.info(f"`make demo` is still building in the background (process {pid}), now: "
                f"{last_line(log_file(db)) or 'starting'}", icon=":material/hourglass:")
    if status is None:
        return
    if status.finished is not None:
        st.success(f"the build finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(status.finished))} after "
                   f"{fmt_seconds(status.finished - status.started)}")
    elif not status.running:
        why = status.error or f"process {status.pid} stopped (killed?)"
        st.warning(f"stopped before the end: {why}. Run it again to resume; finished work is kept and skipped.")
        st.code(status.command, language="bash")
    st.dataframe([{"lens": LENS_NAMES.get(s.lens, s.lens), "layers done": f"{len(set(s.done))} of {len(s.layers)}",
                   "estimate": fmt_seconds(s.seconds), "spent": fmt_seconds(s.spent_s)} for s in status.stages],
                 hide_index=True)


def last_line(path: Path, tail: int = 4096) -> str:
    """The last non-empty line of a log (a progress bar's latest state: tqdm rewrites its line with \\r)."""
    with open(path, "rb") as f:
        f.seek(0, 2)
        f.seek(max(f.tell() - tail, 0))
        text = f.read().decode("utf-8", "replace")
    lines = [x.strip() for x in text.replace("\r", "\n").split("\n") if x.strip()]
    return lines[-1] if lines else ""


def building_caption(db: Path, lenses: tuple[str, ...]) -> None:
    """One line on a page that reads many units: what the running build has still to write of ``lenses``."""
    left = [(lens, n) for lens in lenses if (n := len(pending_layers(db, lens)))]
    if left:
        st.caption("A build is running in the background, still to write: " + ", ".join(
            f"{LENS_NAMES[lens]} of {n} layer{'s' if n > 1 else ''}" for lens, n in left) +
            ". What this page shows grows as it writes them (progress: the Cache page).")
