"""Load benchmark of the served viewer: N concurrent browser sessions opening unit pages, with and without a
harvest writing to the same database.

    python bench/load.py [--db cache/demo.duckdb] [--sessions 8] [--pages 3] [--seed 0]
                         [--no-writer | --writer-only] [--writer harvest|loop] [--json PATH|-]

What it does:
  1. copies the database to a temporary folder (the writer writes to the copy; the given file is never
     opened for writing), migrates the copy if its schema is older than the code's, and reads the cached
     model, its layers and width from it;
  2. starts its own Streamlit server on that copy
     (``.venv/bin/python -m streamlit run viewer/app.py --server.port P --server.headless true -- --db COPY``,
     plus ``--server.address 127.0.0.1 --server.fileWatcherType none``: edits to viewer/ during a run must not
     make the server re-import modules) and one headless Chromium (Debian's /usr/bin/chromium, driven by
     Playwright's async API: one browser, one context per session);
  3. one warm-up visit (first script run: imports, first database open), not counted anywhere, then a few
     seconds of idle to measure the server's idle CPU;
  4. phase "no writer", then phase "writer": ``--sessions`` browser contexts at once, each opening ``--pages``
     unit pages one after the other (root URL ``?model=&layer=&neuron=``; a random cached layer and a random
     neuron, seeded, no unit twice in the whole run). In the writer phase a harvest of a layer that is not in the
     database (``python -m analysis harvest --layers L --max-tokens 20000 --quiet``) is started just before the
     sessions; when one finishes, the next uncached layer is harvested, so writes go on for the whole phase.
     A harvest writes twice: its run and windows at the start, its results at the end (the report says which
     it reached). ``--writer loop`` instead runs short write transactions (a scratch table of the copy) one
     a second, which tests the read-only retries more than the CPU;
  5. per page: wall time from ``page.goto`` until the page is complete: Streamlit's script state
     (``[data-testid=stApp][data-test-script-state]``) is ``notRunning`` after having been ``running``, no
     running indicator in the status widget, and the heatmap rows ``.hm .rec`` are present. A page whose run
     ends with an exception box (``[data-testid=stException]``) or "Traceback" text outside the heatmaps is
     an error; one that ends with an ``st.error`` box saying the database is in use is a "busy" page; one
     with neither heatmap nor error 30 s after its run ended is an error ("no heatmap"); one that does not
     end within ``--timeout`` is a timeout (counted with the errors). Also per page: when the browser saw
     the script run end ("run end"); the rest of the page time is the browser drawing the elements;
  6. server CPU per page: utime+stime of the Streamlit process and its descendants (live ones, plus reaped
     ones through the process's cumulative children times), read before and after each phase's page loop,
     divided by the phase's pages. The writer is a child of this script, not of the server: not counted (its
     CPU is reported beside it, as is the browser's: Playwright's driver and Chromium, which on a small
     machine compete with the server for the same cores).
The server and the writer are stopped at the end, also on Ctrl-C or SIGTERM.

Percentiles are nearest-rank over the phase's successful pages.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import math
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else (shutil.which("chromium") or "chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PYTHON = str(REPO / ".venv" / "bin" / "python") if (REPO / ".venv" / "bin" / "python").exists() else sys.executable
BUSY_MARKERS = ("in use by another process", "database is busy", "try again in a moment")
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Installed in every document before its own scripts: records the changes of Streamlit's script state
# (``data-test-script-state`` on the stApp element: initial -> running -> notRunning) as they happen.
STATE_JS = """
window.__lbRan = false;
window.__lbLog = [];
new MutationObserver(ms => {
  for (const m of ms) {
    const v = m.target.getAttribute && m.target.getAttribute(m.attributeName);
    const now = performance.now();
    if (m.attributeName === 'data-test-script-state') {
      if (v === 'running') { window.__lbRan = true; if (window.__lbRunStart === undefined) window.__lbRunStart = now; }
      if (v === 'notRunning') window.__lbRunEnd = now;
    }
    window.__lbLog.push(m.attributeName.slice(10) + '=' + v + '@' + Math.round(now));
  }
}).observe(document, {subtree: true, attributes: true,
               attributeFilter: ['data-test-script-state', 'data-test-connection-state']});
"""

# Polled in the page every 100 ms after navigation; cheap checks on each poll, the text checks once at the end.
# Complete: a script run has started and is over (state notRunning, no running icon) and the heatmap rows are
# there, or an exception box, or an alert saying the database is busy (the page stops there); else, GRACE_S
# after the run ended, complete without a heatmap. Streamlit's state turns notRunning before the browser has
# drawn all of the run's elements (the state is an urgent update, the element tree is not): with 8 sessions on
# 2 cores the heatmap was seen to come more than 10 s after it. So the state alone never means "rendered".
GRACE_S = 30.0
DONE_JS = """
(grace) => {
  const BUSY = %s;
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return false;
  const state = app.getAttribute('data-test-script-state');
  const running = !window.__lbRan || (state !== 'notRunning' && state !== 'compilationError') ||
    !!document.querySelector('[data-testid="stStatusWidgetRunningIcon"], [data-testid="stStatusWidgetRunningManIcon"]');
  if (running) { window.__lbIdle = undefined; return false; }
  const now = performance.now();
  if (window.__lbIdle === undefined) window.__lbIdle = now;
  const recs = document.querySelectorAll('.hm .rec').length;
  const exc = document.querySelectorAll('[data-testid="stException"]').length;
  const alerts = [...document.querySelectorAll('[data-testid="stAlert"]')].map(e => e.innerText.trim());
  const busy = alerts.some(a => BUSY.some(b => a.toLowerCase().includes(b)));
  if (!recs && !exc && !busy && now - window.__lbIdle < grace) return false;
  let traceback = false;
  const walk = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let n = walk.nextNode(); n; n = walk.nextNode()) {
    if (n.nodeValue.includes('Traceback') && !(n.parentElement && n.parentElement.closest('.hm'))) {
      traceback = true; break;
    }
  }
  const main = document.querySelector('[data-testid="stMain"]') || document.body;
  return {t_ms: now, recs, exc, traceback, alerts, state, run_start_ms: window.__lbRunStart,
          run_end_ms: window.__lbRunEnd, conn: app.getAttribute('data-test-connection-state'),
          text: recs ? '' : main.innerText.slice(0, 400), log: window.__lbLog.join(' '),
          elements: document.querySelectorAll('[data-testid="stElementContainer"]').length};
}
""" % json.dumps(BUSY_MARKERS)


# ---- processes --------------------------------------------------------------------------------------------

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
# scratch table of the copy: insert ROWS rows, delete them), INTERVAL s apart, until stopped; prints one line each
LOOP_WRITER = """
import sys, time
sys.path.insert(0, {repo!r})
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
            return [PYTHON, "-c", LOOP_WRITER.format(repo=str(REPO), db=str(self.db), rows=self.rows,
                                                     interval=self.interval_s)]
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


# ---- the sessions ----------------------------------------------------------------------------------------

@dataclass
class PageResult:
    session: int
    layer: int
    neuron: int
    status: str
    """ok, busy, error, timeout"""
    wall_s: float
    browser_s: float | None = None
    """performance.now() at completion: time since the navigation started, as the browser sees it."""
    recs: int = 0
    detail: str = ""
    started_s: float = 0.0
    run_start_s: float | None = None
    run_end_s: float | None = None
    """When the browser saw the script run start and end (``data-test-script-state``), since the navigation
    started: run_end_s to browser_s is the browser drawing what the server sent."""


def unit_url(base: str, model: str, layer: int, neuron: int) -> str:
    return f"{base}/?model={urllib.parse.quote(model, safe='')}&layer={layer}&neuron={neuron}"


def classify(found: dict) -> tuple[str, str]:
    alerts = found.get("alerts") or []
    if found.get("exc") or found.get("traceback"):
        return "error", "exception box" if found.get("exc") else "Traceback text"
    busy = [a for a in alerts if any(m in a.lower() for m in BUSY_MARKERS)]
    if busy:
        return "busy", busy[0][:200]
    if found.get("recs"):
        return "ok", "; ".join(a[:120] for a in alerts)
    return "error", "no heatmap" + (f": {alerts[0][:200]}" if alerts else
                                    f" (script state {found.get('state')}; page text {found.get('text', '')[:300]!r})")


async def visit(page, base: str, info: DbInfo, session: int, layer: int, neuron: int, timeout_s: float,
                clock: list[float]) -> PageResult:
    from playwright.async_api import Error as PlaywrightError, TimeoutError as PlaywrightTimeout

    start = time.perf_counter()
    res = PageResult(session, layer, neuron, "timeout", 0.0, started_s=time.monotonic() - clock[0])
    try:
        await page.goto(unit_url(base, info.model, layer, neuron), wait_until="commit", timeout=timeout_s * 1000)
        left = max(1.0, timeout_s - (time.perf_counter() - start))
        handle = await page.wait_for_function(DONE_JS, arg=GRACE_S * 1000, polling=100, timeout=left * 1000)
        found = await handle.json_value()
        res.wall_s = time.perf_counter() - start
        res.browser_s, res.recs = found["t_ms"] / 1000, found.get("recs", 0)
        res.run_start_s, res.run_end_s = (found[k] / 1000 if found.get(k) is not None else None
                                          for k in ("run_start_ms", "run_end_ms"))
        res.status, res.detail = classify(found)
        if res.status == "error" and not found.get("recs"):
            # did the page finish later after all? (then the completion test above fired too early)
            await asyncio.sleep(5)
            late = await page.evaluate("document.querySelectorAll('.hm .rec').length")
            res.detail += (f"; {found.get('elements')} elements; state log: {found.get('log')}; "
                           + (f"heatmap appeared within 5 s more ({late} rows)" if late else "no heatmap 5 s later"))
    except PlaywrightTimeout:
        res.wall_s, res.detail = time.perf_counter() - start, f"not complete after {timeout_s:.0f} s"
    except PlaywrightError as exc:
        res.wall_s, res.status, res.detail = time.perf_counter() - start, "error", f"browser: {str(exc)[:200]}"
    return res


async def new_context(browser):
    ctx = await browser.new_context(viewport={"width": 1400, "height": 1600})
    await ctx.add_init_script(STATE_JS)
    return ctx


async def session_loop(browser, base: str, info: DbInfo, session: int, picks: list[tuple[int, int]],
                       timeout_s: float, clock: list[float], ready: asyncio.Event, go: asyncio.Event
                       ) -> list[PageResult]:
    ctx = await new_context(browser)
    try:
        page = await ctx.new_page()
        ready.set()
        await go.wait()
        return [await visit(page, base, info, session, layer, neuron, timeout_s, clock) for layer, neuron in picks]
    finally:
        await ctx.close()


def pct(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    v = sorted(values)
    return v[max(0, math.ceil(q / 100 * len(v)) - 1)]


@dataclass
class Phase:
    name: str
    pages: list[PageResult] = field(default_factory=list)
    wall_s: float = 0.0
    server_cpu_s: float = 0.0
    client_cpu_s: float = 0.0
    """Playwright's driver and Chromium (this script's children other than the server and the writer)."""
    machine_busy_s: float = 0.0
    writer_cpu_s: float | None = None
    writer_runs: list[WriterRun] = field(default_factory=list)
    writer_error: str | None = None
    server_rss_mb: float | None = None

    def summary(self) -> dict:
        ok = [p.wall_s for p in self.pages if p.status == "ok"]
        run_end = [p.run_end_s for p in self.pages if p.status == "ok" and p.run_end_s is not None]
        n = len(self.pages)
        return {
            "phase": self.name, "pages": n, "ok": len(ok),
            "p50_s": pct(ok, 50), "p95_s": pct(ok, 95), "max_s": max(ok) if ok else None,
            "mean_s": statistics.fmean(ok) if ok else None,
            "run_end_p50_s": pct(run_end, 50), "run_end_p95_s": pct(run_end, 95),
            "errors": sum(p.status in ("error", "timeout") for p in self.pages),
            "timeouts": sum(p.status == "timeout" for p in self.pages),
            "busy": sum(p.status == "busy" for p in self.pages),
            "server_cpu_s": self.server_cpu_s, "server_cpu_s_per_page": self.server_cpu_s / n if n else None,
            "client_cpu_s": self.client_cpu_s, "client_cpu_s_per_page": self.client_cpu_s / n if n else None,
            "wall_s": self.wall_s, "pages_per_s": n / self.wall_s if self.wall_s else None,
            "machine_busy_cores": self.machine_busy_s / self.wall_s if self.wall_s else None,
            "writer_cpu_s": self.writer_cpu_s,
            "writer_harvests": len(self.writer_runs),
            "writer_harvests_finished": sum(r.rc == 0 and not r.stopped for r in self.writer_runs),
            "writer_error": self.writer_error, "server_rss_mb": self.server_rss_mb,
        }


async def run_phase(name: str, browser, base: str, server_pid: int, info: DbInfo,
                    picks: list[list[tuple[int, int]]], timeout_s: float, writer: Writer | None) -> Phase:
    phase = Phase(name)
    exclude = {server_pid}  # the writer's harvests and py-spy are started by spawn(): session leaders, skipped
    clock = [time.monotonic()]  # the phase's start, set again when the sessions are let go
    readies = [asyncio.Event() for _ in picks]
    go = asyncio.Event()
    tasks = [asyncio.create_task(session_loop(browser, base, info, i, p, timeout_s, clock, readies[i], go))
             for i, p in enumerate(picks)]
    stop_writer = asyncio.Event()
    wtask = None
    try:
        await asyncio.gather(*(r.wait() for r in readies))  # contexts and blank pages exist
        cpu0, busy0, kids0, client0 = tree_cpu_s(server_pid), machine_busy_s(), children_cpu_s(), client_cpu_s(exclude)
        t0 = clock[0] = time.monotonic()
        if writer is not None:
            wtask = asyncio.create_task(writer.loop(stop_writer, t0))
            await asyncio.sleep(0.1)  # the harvest is started just before the sessions
        go.set()
        results = await asyncio.gather(*tasks)
        phase.wall_s = time.monotonic() - t0
        await asyncio.sleep(0.5)  # the closed sessions' teardown on the server
        phase.server_cpu_s = tree_cpu_s(server_pid) - cpu0
        phase.client_cpu_s = client_cpu_s(exclude) - client0
        phase.machine_busy_s = machine_busy_s() - busy0
        phase.server_rss_mb = rss_mb(server_pid)
        if wtask is not None:
            stop_writer.set()
            await wtask
            phase.writer_cpu_s = children_cpu_s() - kids0  # the harvests are our only children reaped meanwhile
            phase.writer_runs, phase.writer_error = writer.runs, writer.error
        phase.pages = sorted((p for r in results for p in r), key=lambda p: p.started_s)
        return phase
    finally:
        stop_writer.set()
        for t in tasks + ([wtask] if wtask else []):
            if not t.done():
                t.cancel()


async def bench(args, info: DbInfo, copy: Path, folder: Path, procs: dict) -> dict:
    from playwright.async_api import async_playwright

    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    loop.add_signal_handler(signal.SIGTERM, me.cancel)

    rng = random.Random(args.seed)
    seen: set[tuple[int, int]] = set()

    def draw() -> tuple[int, int]:
        while True:
            u = (rng.choice(info.layers), rng.randrange(info.d_mlp))
            if u not in seen or len(seen) >= len(info.layers) * info.d_mlp:
                seen.add(u)
                return u

    phases = [("no writer", False), ("writer", True)]
    if args.no_writer:
        phases = phases[:1]
    elif args.writer_only:
        phases = phases[1:]
    warm_unit = draw()
    plan = {name: [[draw() for _ in range(args.pages)] for _ in range(args.sessions)] for name, _ in phases}

    print("starting the viewer on the copy …", file=sys.stderr)
    server, base = await asyncio.to_thread(start_server, copy, folder / "server.log")
    procs["server"] = server
    out: dict = {"server_pid": server.pid, "url": base}
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            ctx = await new_context(browser)
            page = await ctx.new_page()
            cpu0 = tree_cpu_s(server.pid)
            warm = await visit(page, base, info, -1, *warm_unit, max(args.timeout, 180), [time.monotonic()])
            await ctx.close()
            await asyncio.sleep(0.5)
            out["warmup"] = {**asdict(warm), "server_cpu_s": tree_cpu_s(server.pid) - cpu0}
            print(f"warm-up visit L{warm.layer}/N{warm.neuron}: {warm.status} in {warm.wall_s:.1f} s, server CPU "
                  f"{out['warmup']['server_cpu_s']:.2f} s (not counted)", file=sys.stderr)
            if warm.status != "ok":
                raise RuntimeError(f"the warm-up page did not render: {warm.detail}\n{tail(folder / 'server.log')}")
            cpu0, t0 = tree_cpu_s(server.pid), time.monotonic()
            await asyncio.sleep(args.idle_s)
            out["server_idle_cpu_per_s"] = (tree_cpu_s(server.pid) - cpu0) / (time.monotonic() - t0)
            if args.profile:
                spy = shutil.which("py-spy") or args.py_spy
                procs["py-spy"] = spawn([spy, "record", "-p", str(server.pid), "-o", str(Path(args.profile).resolve()),
                                         "--format", "raw", "--rate", "50", "--nonblocking"], folder / "py-spy.log")
                out["profile"] = str(Path(args.profile).resolve())
                print(f"py-spy is sampling the server (50 Hz) into {args.profile}: the numbers of this run are "
                      "perturbed", file=sys.stderr)
            out["phases"] = []
            for name, with_writer in phases:
                writer = None
                if with_writer:
                    free = [l for l in range(info.n_layers) if l not in info.layers]
                    if args.writer_layers:
                        free = [int(x) for x in args.writer_layers.split(",")]
                    writer = Writer(copy, info, free, args.max_tokens, folder, args.writer, args.write_rows,
                                    args.write_interval)
                    procs["writer"] = writer
                print(f"phase '{name}': {args.sessions} sessions x {args.pages} pages"
                      + (f", {writer.describe()} writing meanwhile" if writer else "") + " …", file=sys.stderr)
                phase = await run_phase(name, browser, base, server.pid, info, plan[name], args.timeout, writer)
                procs.pop("writer", None)
                out["phases"].append({"summary": phase.summary(), "pages": [asdict(x) for x in phase.pages],
                                      "writer_runs": [asdict(r) for r in phase.writer_runs]})
            await asyncio.to_thread(stop, procs.pop("py-spy", None), signal.SIGINT, 30.0)
        finally:
            await browser.close()
    return out


def fmt(v, spec: str = ".2f", none: str = "—") -> str:
    return none if v is None else format(v, spec)


def report(result: dict) -> str:
    cores = os.cpu_count()
    lines = [f"database: copy of {result['db']} in {result['copy']} (the original is not modified)",
             f"model {result['model']}, cached layers {result['layers']}, {result['d_mlp']} neurons per layer; "
             f"{result['sessions']} sessions x {result['pages']} pages per phase, seed {result['seed']}",
             f"warm-up visit (not counted): {result['warmup']['wall_s']:.1f} s, server CPU "
             f"{result['warmup']['server_cpu_s']:.2f} s; server idle CPU {result['server_idle_cpu_per_s'] * 100:.1f} %",
             "",
             "| phase | pages | ok | p50 s | p95 s | max s | run end p50 / p95 s | errors | busy | server CPU s/page | "
             f"browser CPU s/page | wall s | machine busy (of {cores} cores) | writer CPU s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ph in result["phases"]:
        s = ph["summary"]
        lines.append(f"| {s['phase']} | {s['pages']} | {s['ok']} | {fmt(s['p50_s'])} | {fmt(s['p95_s'])} | "
                     f"{fmt(s['max_s'])} | {fmt(s['run_end_p50_s'])} / {fmt(s['run_end_p95_s'])} | {s['errors']}"
                     + (f" ({s['timeouts']} timeouts)" if s["timeouts"] else "")
                     + f" | {s['busy']} | **{fmt(s['server_cpu_s_per_page'], '.3f')}** | "
                     f"{fmt(s['client_cpu_s_per_page'], '.2f')} | {s['wall_s']:.1f} | "
                     f"{fmt(s['machine_busy_cores'])} | {fmt(s['writer_cpu_s'], '.1f')} |")
    for ph in result["phases"]:
        for r in ph["writer_runs"]:
            state = "stopped at the end of the phase" if r["stopped"] else f"rc {r['rc']}"
            what = f"harvest of layer {r['layer']}" if r["layer"] >= 0 else "write loop"
            lines.append(f"writer: {what} started at +{r['started_s']:.1f} s, ran {fmt(r['seconds'], '.1f')} s, "
                         f"{state}; wrote: {r['wrote']}")
        if ph["summary"]["writer_error"]:
            lines.append(f"writer error: {ph['summary']['writer_error']}")
        bad = [p for p in ph["pages"] if p["status"] != "ok"]
        for p in bad[:10]:
            lines.append(f"  {ph['summary']['phase']}: L{p['layer']}/N{p['neuron']} {p['status']}: {p['detail']}")
    lines.append(f"target: server CPU per page <= {result['target_cpu_s']} s")
    if result.get("profile"):
        lines.append(f"py-spy sampled the server during the phases ({result['profile']}): perturbed numbers")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", default=str(REPO / "cache" / "demo.duckdb"))
    ap.add_argument("--sessions", type=int, default=8, help="concurrent browser sessions (contexts)")
    ap.add_argument("--pages", type=int, default=3, help="unit pages per session and phase")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-writer", action="store_true", help="only the phase without a writer")
    ap.add_argument("--writer-only", action="store_true", help="only the phase with a writer")
    ap.add_argument("--writer-layers", default=None,
                    help="layers the writer harvests one after another (default: the uncached ones, lowest first)")
    ap.add_argument("--writer", choices=["harvest", "loop"], default="harvest",
                    help="what writes in the writer phase: harvests of uncached layers, or a loop of short write "
                         "transactions into a scratch table of the copy")
    ap.add_argument("--max-tokens", type=int, default=20_000, help="tokens per writer harvest")
    ap.add_argument("--write-rows", type=int, default=200_000, help="--writer loop: rows per write transaction")
    ap.add_argument("--write-interval", type=float, default=1.0, help="--writer loop: seconds between writes")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds a page may take before it is a timeout")
    ap.add_argument("--idle-s", type=float, default=3.0, help="seconds of idle to measure the server's idle CPU")
    ap.add_argument("--json", nargs="?", const="-", default=None, metavar="PATH",
                    help="also write the full result as JSON to PATH ('-' or no value: stdout)")
    ap.add_argument("--profile", metavar="PATH", default=None,
                    help="sample the server with py-spy during the phases (collapsed stacks to PATH; perturbs the run)")
    ap.add_argument("--py-spy", default="/tmp/pyspy/bin/py-spy", help="py-spy binary if not on PATH")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (copy, server and writer logs)")
    args = ap.parse_args()
    if args.no_writer and args.writer_only:
        ap.error("--no-writer and --writer-only exclude each other")
    src = Path(args.db).expanduser().resolve()
    if not src.exists():
        ap.error(f"no database at {src}")
    folder = Path(tempfile.mkdtemp(prefix="viewer-load-"))
    procs: dict = {}
    try:
        copy = copy_db(src, folder)
        print(f"copied {src} ({src.stat().st_size / 2**20:.0f} MiB) to {copy}: the server reads and the writer "
              f"writes the copy, never {src}", file=sys.stderr)
        migrated = migrate_copy(copy)
        if migrated:
            print(f"migrated the copy from schema version {migrated[0]} to {migrated[1]} (the current code's)",
                  file=sys.stderr)
        info = db_info(copy)
        result = {"db": str(src), "copy": str(copy), "model": info.model, "layers": info.layers, "d_mlp": info.d_mlp,
                  "sessions": args.sessions, "pages": args.pages, "seed": args.seed, "max_tokens": args.max_tokens,
                  "target_cpu_s": 0.15, "cpu_count": os.cpu_count()}
        result.update(asyncio.run(bench(args, info, copy, folder, procs)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("interrupted: stopping the viewer and the writer", file=sys.stderr)
        return 130
    finally:
        w = procs.get("writer")
        stop(w.proc if w else None, signal.SIGINT)
        stop(procs.get("py-spy"), signal.SIGINT)
        stop(procs.get("server"))
        if args.keep:
            print(f"kept {folder}", file=sys.stderr)
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print(report(result))
    if args.json:
        text = json.dumps(result, indent=1, default=str)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    return 0 if all(ph["summary"]["ok"] for ph in result["phases"]) else 1


if __name__ == "__main__":
    sys.exit(main())
