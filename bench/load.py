"""Load benchmark of the served viewer: N concurrent browser sessions opening unit pages, with and without a
harvest writing to the same database.

    python -m bench.load [--db data/demo.duckdb] [--sessions 8] [--pages 3] [--seed 0]
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
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from analysis.config import default_db
from bench.load_procs import (DbInfo, Writer, copy_db, db_info, migrate_copy, spawn, start_server, stop, tail,
                              tree_cpu_s)
from bench.load_sessions import new_context, run_phase, visit

CHROMIUM = "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else (shutil.which("chromium") or "chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


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
    ap.add_argument("--db", default=str(default_db()))
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
