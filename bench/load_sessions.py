"""bench/load.py's browser side: the scripts that tell when a unit page is complete, one page visit and one
session's visits (Playwright's async API), and a phase: the sessions at once, timed and their CPU counted."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import urllib.parse
from dataclasses import dataclass, field

from bench.load_procs import (DbInfo, Writer, WriterRun, children_cpu_s, client_cpu_s, machine_busy_s, rss_mb,
                              tree_cpu_s)

BUSY_MARKERS = ("in use by another process", "database is busy", "try again in a moment")

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

