"""bench/load.py's processes and files: children started in their own session and stopped with their group,
CPU and memory accounting from /proc (or psutil), the Streamlit server, the database copy, and the writer that
harvests into (or loops short writes on) that copy during the writer phase."""

from __future__ import annotations

import asyncio
import ctypes
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
CLK_TCK = os.sysconf("SC_CLK_TCK")


def _die_with_parent() -> None:
    """In the child before exec: a new session (our Ctrl-C handling stops it, not the terminal's), and SIGTERM
    when this script dies, even by SIGKILL (Linux)."""
    os.setsid()
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def spawn(cmd: list[str], log: Path) -> subprocess.Popen:
    with open(log, "ab") as f:
        return subprocess.Popen(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)


def stop(proc: subprocess.Popen | None, first: int = signal.SIGTERM, grace_s: float = 10.0) -> None:
    """Stop a child started by ``spawn`` and its process group (its own id: it is a session leader)."""
    if proc is None or proc.poll() is not None:
        return
    for sig, wait in ((first, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def tree_cpu_s(pid: int) -> float:
    """utime+stime of a process, its reaped children (cumulative) and its live descendants, in seconds."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        p = psutil.Process(pid)
        t = p.cpu_times()
        total = t.user + t.system + t.children_user + t.children_system
        for c in p.children(recursive=True):
            try:
                ct = c.cpu_times()
                total += ct.user + ct.system + ct.children_user + ct.children_system
            except psutil.NoSuchProcess:
                pass
        return total
    # /proc fallback: fields 14-17 are utime, stime, cutime, cstime (clock ticks)
    def stat(p: int) -> list[str]:
        raw = Path(f"/proc/{p}/stat").read_text()
        return raw[raw.rindex(")") + 2:].split()  # fields from 3 on

    def kids(p: int) -> list[int]:
        out = []
        for task in Path(f"/proc/{p}/task").iterdir():
            f = task / "children"
            if f.exists():
                out += [int(x) for x in f.read_text().split()]
        return out

    f = stat(pid)
    total = sum(int(x) for x in f[11:15]) / CLK_TCK
    todo = kids(pid)
    while todo:
        c = todo.pop()
        try:
            total += sum(int(x) for x in stat(c)[11:15]) / CLK_TCK
            todo += kids(c)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def machine_busy_s() -> float:
    """CPU-seconds the whole machine has spent not idle (all cores), from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return (sum(parts[:8]) - idle) / CLK_TCK


def client_cpu_s(exclude: set[int]) -> float:
    """CPU of this script's children and their trees (Playwright's driver, Chromium), less ``exclude`` and any
    child that leads its own session (the server, the writer, py-spy: started by ``spawn``)."""
    try:
        import psutil
    except ImportError:
        return float("nan")
    total = 0.0
    for c in psutil.Process().children():
        try:
            if c.pid in exclude or os.getsid(c.pid) == c.pid:
                continue
            total += tree_cpu_s(c.pid)
        except (psutil.NoSuchProcess, ProcessLookupError):
            pass
    return total


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(db: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [PYTHON, "-m", "streamlit", "run", "viewer/app.py", "--server.port", str(port), "--server.headless", "true",
           "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
           # no file watcher: an edit to viewer/ during the run would make the server re-import modules
           "--server.fileWatcherType", "none", "--", "--db", str(db)]
    proc = spawn(cmd, log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the viewer exited with {proc.returncode}: {tail(log)}")
        try:
            if urllib.request.urlopen(url + "/_stcore/health", timeout=2).status == 200:
                return proc, url
        except OSError:
            time.sleep(0.3)
    stop(proc)
    raise RuntimeError(f"the viewer did not start within 90 s: {tail(log)}")


def tail(path: Path, n: int = 1200) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# ---- the database ----------------------------------------------------------------------------------------

@dataclass
class DbInfo:
    model: str
    n_layers: int
    d_mlp: int
    layers: list[int]
    corpus: str | None


def db_info(db: Path) -> DbInfo:
    from analysis.types import MLP
    from cache.store import open_store

    with open_store(db, read_only=True) as s:
        models = s.catalog.models()
        if not models:
            raise SystemExit(f"{db} holds no harvested model")
        for m in models:
            runs = s.runs.finished(m.name, source=MLP)
            if runs:
                layers = sorted({l for r in runs for l in r.layers})
                return DbInfo(m.name, m.n_layers, m.d_mlp, layers, s.catalog.corpus_arg(runs[0].corpus_id))
    raise SystemExit(f"{db} holds no finished neuron harvest")


def copy_db(src: Path, folder: Path) -> Path:
    dst = folder / src.name
    shutil.copy2(src, dst)
    wal = src.with_name(src.name + ".wal")
    if wal.exists():
        shutil.copy2(wal, dst.with_name(dst.name + ".wal"))
    return dst


def migrate_copy(copy: Path) -> tuple[int, int] | None:
    """Bring the copy to the schema this code reads (the viewer refuses an older one); None if it already is."""
    import duckdb

    from cache.db import schema_version
    from cache.migrations import SCHEMA_VERSION
    from cache.store import migrate_file

    con = duckdb.connect(str(copy), read_only=True)
    try:
        version = schema_version(con)
    finally:
        con.close()
    return migrate_file(copy) if version < SCHEMA_VERSION else None


# ---- the writer ------------------------------------------------------------------------------------------

@dataclass
class WriterRun:
    layer: int
    started_s: float
    seconds: float | None = None
    rc: int | None = None
    stopped: bool = False
    """Stopped by the bench at the end of the phase (still harvesting then)."""
    wrote: str = ""
    """What reached the database: 'registration' (the run and its windows, at the start), 'results' (the
    records and stats, at the end), or for --writer loop the number of write transactions."""
    log_tail: str = ""


# --writer loop: short write transactions through the store, each holding the write lock for a moment (a
# scratch table of the copy: insert ROWS rows, delete them), INTERVAL s apart, until stopped; prints one line each.
# spawn() runs it in the repository root, which ``python -c`` puts first on sys.path: ``cache`` is this checkout's.
LOOP_WRITER = """
import time
from cache.store import open_store
n = 0
while True:
    t = time.monotonic()
    with open_store({db!r}, wait_s=30.0) as s:
        cur = s.con.cursor()
        cur.execute("CREATE TABLE IF NOT EXISTS bench_load_scratch (i INTEGER, v DOUBLE)")
        cur.execute("BEGIN TRANSACTION")
        cur.execute("INSERT INTO bench_load_scratch SELECT range, random() FROM range({rows})")
        cur.execute("DELETE FROM bench_load_scratch")
        cur.execute("COMMIT")
    n += 1
    print(f"write {{n}} held the file {{time.monotonic() - t:.3f}} s", flush=True)
    time.sleep({interval})
"""


class Writer:
    """Harvests one uncached layer after another into the copy until stopped (``kind`` 'harvest'), or runs the
    loop of short writes (``kind`` 'loop')."""

    def __init__(self, db: Path, info: DbInfo, layers: list[int], max_tokens: int, folder: Path,
                 kind: str = "harvest", rows: int = 200_000, interval_s: float = 1.0):
        self.db, self.info, self.layers, self.max_tokens, self.folder = db, info, list(layers), max_tokens, folder
        self.kind, self.rows, self.interval_s = kind, rows, interval_s
        self.proc: subprocess.Popen | None = None
        self.runs: list[WriterRun] = []
        self.error: str | None = None

    def describe(self) -> str:
        if self.kind == "loop":
            return f"a loop of short writes ({self.rows:,} rows each, {self.interval_s:g} s apart)"
        return f"harvest of layer {self.layers[0]} ({self.max_tokens:,} tokens)"

    def command(self, layer: int) -> list[str]:
        if self.kind == "loop":
            return [PYTHON, "-c", LOOP_WRITER.format(db=str(self.db), rows=self.rows, interval=self.interval_s)]
        cmd = [PYTHON, "-m", "analysis", "harvest", "--db", str(self.db), "--model", self.info.model,
               "--layers", str(layer), "--max-tokens", str(self.max_tokens), "--quiet"]
        return cmd + (["--corpus", self.info.corpus] if self.info.corpus else [])

    def wrote(self, log: str) -> str:
        if self.kind == "loop":
            return f"{log.count('held the file')} write transactions"
        done = [w for w, marker in (("registration", "\nharvest "), ("results", "\ndone: ")) if marker in "\n" + log]
        return " + ".join(done) or "nothing yet"

    async def loop(self, stop_event: asyncio.Event, t0: float) -> None:
        try:
            while not stop_event.is_set():
                if self.kind == "harvest" and not self.layers:
                    self.error = "no uncached layer left to harvest"
                    return
                layer = self.layers.pop(0) if self.kind == "harvest" else -1
                log = self.folder / f"writer-{len(self.runs)}.log"
                run = WriterRun(layer, time.monotonic() - t0)
                self.runs.append(run)
                self.proc = spawn(self.command(layer), log)
                start = time.monotonic()
                while self.proc.poll() is None and not stop_event.is_set():
                    await asyncio.sleep(0.2)
                if self.proc.poll() is None:
                    run.stopped = True
                    await asyncio.to_thread(stop, self.proc, signal.SIGINT, 10.0)
                run.rc, run.seconds = self.proc.returncode, time.monotonic() - start
                run.log_tail = tail(log, 600).strip()
                run.wrote = self.wrote(tail(log, 10**7))
                if run.rc != 0 and not run.stopped:
                    self.error = f"harvest of layer {layer} failed (rc {run.rc}): {run.log_tail[-300:]}"
                    return
        finally:
            await asyncio.to_thread(stop, self.proc, signal.SIGINT, 10.0)

