"""A background build as the viewer shows it: its progress on the Cache page, and a note on any page whose lens
the running build has not written yet (``analysis.jobs.build.read_status``)."""

from __future__ import annotations

import time
from pathlib import Path

import streamlit as st

from analysis.jobs.build import BuildStatus, fmt_seconds, read_status

LENS_NAMES = {"harvest": "harvest", "baselines": "token-lookup baselines", "topics": "topics", "n2g": "graphs",
              "effects": "ablation effects", "explain": "explanations", "score": "explanation scores"}


def build_status(db: Path) -> BuildStatus | None:
    """The database's last build (a small JSON file beside it; read on every call, it changes as the build goes)."""
    return read_status(db)


def still_building(db: Path, lens: str, unit) -> bool:
    """Say so and return True when the running build is still to write ``lens`` for ``unit`` (an MLP neuron)."""
    from analysis.types import MLP

    status, layer = build_status(db), unit.layer
    if status is None or unit.source != MLP or not status.pending(lens, layer, unit.index):
        return False
    left = status.left_s()
    st.info(f"The {LENS_NAMES[lens]} of layer {layer} are still being built by the build running in the background"
            f" (now: {status.where() or 'starting'}" + (f"; ≈ {fmt_seconds(left)} left" if left else "") +
            "). This fills in when it gets here; its progress is on the Cache page.", icon=":material/hourglass:")
    return True


def pending_layers(db: Path, lens: str) -> list[int]:
    """The layers of ``lens`` the running build has still to write (empty when no build runs)."""
    status = build_status(db)
    if status is None or not status.running:
        return []
    return sorted({layer for s in status.stages if s.lens == lens for layer in s.layers if layer not in s.done})


def log_file(db: Path) -> Path:
    """Where `make demo` writes its background build's output."""
    return Path(str(db) + ".build.log")


def build_panel(db: Path) -> None:
    """The last build's progress, or nothing when none ran."""
    status, log = build_status(db), log_file(db)
    if status is None:
        return
    st.subheader("Build")
    if status.running:
        left = status.left_s()
        st.progress(status.fraction, text=f"running (process {status.pid}): {status.where() or 'starting'} · "
                    f"{status.fraction:.0%} of the plan" + (f" · ≈ {fmt_seconds(left)} left" if left else ""))
    elif status.finished is not None:
        st.success(f"finished {time.strftime('%Y-%m-%d %H:%M', time.localtime(status.finished))} after "
                   f"{fmt_seconds(status.finished - status.started)}")
    else:
        why = status.error or f"process {status.pid} stopped (killed?)"
        st.warning(f"stopped before the end: {why}. Run it again to resume; finished work is kept and skipped.")
        st.code(status.command, language="bash")
    st.dataframe([{"lens": LENS_NAMES.get(s.lens, s.lens), "layers done": f"{len(set(s.done))} of {len(s.layers)}",
                   "estimate": fmt_seconds(s.seconds), "spent": fmt_seconds(s.spent_s)} for s in status.stages],
                 hide_index=True)
    if log.exists():
        st.text(f"log {log}: {last_line(log)}")


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
