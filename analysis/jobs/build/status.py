"""What a running build is doing, written beside the database (``<db>.build.json``) for the viewer's Cache page,
and the command that resumes it."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from analysis.api import ApiConfig
from analysis.progress import Progress
from analysis.jobs.build.plan import CHEAP, BuildJob, Stage

@dataclass
class StageStatus:
    lens: str
    layers: list[int]
    seconds: float
    """The plan's estimate for the whole stage."""
    done: list[int] = field(default_factory=list)
    spent_s: float = 0.0


@dataclass
class BuildStatus:
    """What a build is doing, written beside the database as it goes (``<db>.build.json``)."""

    pid: int
    started: float
    command: str
    """The command that resumes this build (or reruns it: finished work is skipped)."""
    stages: list[StageStatus]
    current: tuple[int, int | None] | None = None
    """(index into ``stages``, layer; None for the harvest, which does all its layers at once) while it runs."""
    step: tuple[str, int, int] | None = None
    """The running stage's own progress: (what, done, total)."""
    units: list[int] | None = None
    """The units of each layer the expensive lenses build (None: all)."""
    finished: float | None = None
    error: str | None = None
    updated: float = 0.0

    @classmethod
    def start(cls, stages: list[Stage], command: str, units: list[int] | None) -> "BuildStatus":
        return cls(os.getpid(), time.time(), command,
                   [StageStatus(s.lens, list(s.layers), s.seconds, list(s.layers) if s.basis == "done" else [])
                    for s in stages], units=units)

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True

    @property
    def running(self) -> bool:
        return self.finished is None and self.error is None and self.alive()

    def pending(self, lens: str, layer: int, index: int) -> bool:
        """Whether this running build is still to write ``lens`` for unit ``index`` of ``layer``."""
        if not self.running or not (lens in CHEAP or self.units is None or index in self.units):
            return False
        return any(s.lens == lens and layer in s.layers and layer not in s.done for s in self.stages)

    @property
    def fraction(self) -> float:
        """Share of the planned seconds done (a running stage-layer counts by its own progress)."""
        total = sum(s.seconds for s in self.stages) or 1.0
        done = sum(s.seconds * len(set(s.done)) / max(len(s.layers), 1) for s in self.stages)
        if self.current is not None and self.step is not None and self.step[2] > 0:
            s = self.stages[self.current[0]]
            share = 1.0 if self.current[1] is None else 1 / max(len(s.layers), 1)
            done += s.seconds * share * min(self.step[1] / self.step[2], 1.0)
        return min(done / total, 1.0)

    def left_s(self, now: float | None = None) -> float | None:
        """Seconds left, from the plan's estimates scaled by how this build has gone so far (None before any
        measurable progress)."""
        now = time.time() if now is None else now
        f = self.fraction
        if f <= 0.01:
            return None
        return (now - self.started) * (1 - f) / f

    def where(self) -> str:
        if self.current is None:
            return ""
        s = self.stages[self.current[0]]
        here = s.lens + (f" L{self.current[1]}" if self.current[1] is not None else "")
        return here + (f" ({self.step[0]}: {self.step[1]:,}/{self.step[2]:,})" if self.step else "")


def status_file(db: Path) -> Path:
    return Path(str(db) + ".build.json")


def read_status(db: Path) -> BuildStatus | None:
    """The last build's status for this database (None when none ran or the file is unreadable)."""
    try:
        d = json.loads(status_file(db).read_text())
        d["stages"] = [StageStatus(**s) for s in d["stages"]]
        d["current"] = tuple(d["current"]) if d.get("current") is not None else None
        d["step"] = tuple(d["step"]) if d.get("step") is not None else None
        return BuildStatus(**d)
    except (OSError, ValueError, TypeError, KeyError):
        return None


class StatusProgress(Progress):
    """The build's progress as shown (the wrapped ``Progress``) and written to its status file: every bar a stage
    opens reports its count into ``status.step`` (at most every SAVE_S seconds)."""

    SAVE_S = 2.0

    def __init__(self, shown: Progress, status: BuildStatus, path: Path):
        super().__init__(shown.enabled)
        self.shown, self.status, self.path, self.saved = shown, status, path, 0.0

    def save(self, throttle: bool = False) -> None:
        now = time.time()
        if throttle and now - self.saved < self.SAVE_S:
            return
        self.saved = self.status.updated = now
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            tmp.write_text(json.dumps(asdict(self.status)))
            tmp.replace(self.path)
        except OSError:  # a read-only folder: the stage's own writes will say so
            pass

    def bar(self, total: int, desc: str, unit: str = "it", initial: int = 0, **kwargs):
        return _StatusBar(self.shown.bar(total, desc, unit, initial, **kwargs), self, desc, total, initial)

    def note(self, text: str) -> None:
        self.shown.note(text)


class _StatusBar:
    """A stage's bar: the shown bar, with its count copied into the build's status."""

    def __init__(self, shown, owner: StatusProgress, desc: str, total: int, initial: int):
        self.shown, self.owner, self.desc, self.total, self.n = shown, owner, desc, total, initial
        self._report(False)

    def _report(self, throttle: bool = True) -> None:
        self.owner.status.step = (self.desc, self.n, self.total)
        self.owner.save(throttle)

    def update(self, n: int = 1) -> None:
        self.n += n
        self.shown.update(n)
        self._report()

    def set_description(self, desc: str, *args, **kwargs) -> None:
        self.desc = desc
        self.shown.set_description(desc, *args, **kwargs)

    def close(self) -> None:
        self.shown.close()

    def __getattr__(self, name):
        return getattr(self.shown, name)


def resume_command(job: BuildJob, db: Path) -> str:
    """The CLI command that runs ``job`` again (flags for the fields that differ from their defaults; an API
    endpoint's settings are not repeated: the command says to add them)."""
    import shlex

    parts = ["python -m analysis build", "--db", shlex.quote(str(db))]
    for f in fields(BuildJob):
        value = getattr(job, f.name)
        if f.name in ("plan_only", "api") or value == f.default:  # (api: its own flags, not kept here)
            continue
        flag = "--" + f.name.replace("_", "-")
        text = ",".join(value) if isinstance(value, tuple) else str(value)
        parts += [flag, shlex.quote(text)]
    if job.api != ApiConfig():
        parts.append("  # plus the --api-* options it was started with")
    return " ".join(parts)
