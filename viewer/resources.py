"""The viewer's only Streamlit caches and its database access. Every cached argument is part of the key."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import streamlit as st

from analysis.config import REPO_ROOT, default_db
from analysis.models import SubjectModel, load_model
from analysis.types import UserError
from cache.store import Store, open_store

MAX_LIVE_TOKENS = 1024
"""Live text longer than this many tokens is cut (with a message): ~2 s of CPU at the last layer."""


def db_path() -> Path:
    """``streamlit run viewer/app.py -- --db PATH``, else $NEURON_VIEWER_DB, else the demo cache."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--db", default=None)
    args, _ = parser.parse_known_args(sys.argv[1:])
    return Path(args.db or os.environ.get("NEURON_VIEWER_DB") or default_db()).expanduser().resolve()


@contextmanager
def store() -> Iterator[Store]:
    """The database, read-only, for the duration of one page render (a writer may hold it in between)."""
    with open_store(db_path(), read_only=True, wait_s=8.0) as s:
        yield s


@st.cache_resource(show_spinner="loading the model (once per server)…", max_entries=2)
def subject(name: str, device: str = "cpu") -> SubjectModel:
    return load_model(name, device=device)


def cached_models(s: Store) -> list:
    """The cached models; when there are none, says how to build a cache (callers then stop)."""
    models = s.models()
    if not models:
        st.info(f"{db_path()} holds no harvest yet. Build the demo cache with `make demo`, or run "
                f"`python -m analysis harvest --db {db_path()}`.")
    return models


def show_error(exc: Exception) -> None:
    st.error(str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}")


def live_simulators(model_name: str) -> dict:
    """The simulators pages can run live: name -> factory(UnitRecord)."""
    from analysis.evaluate import token_lookup_simulator
    from analysis.simulate import LocalAllAtOnceSimulator

    return {"token-lookup": token_lookup_simulator,
            "local-all-at-once": lambda rec: LocalAllAtOnceSimulator(subject(model_name))}


def run_job(args: list[str], label: str) -> None:
    """Run ``python -m analysis ARGS`` (it writes the cache), showing its progress line live; rerun when done."""
    cmd = [sys.executable, "-m", "analysis", *args, "--db", str(db_path())]
    with st.status(label, expanded=True) as status:
        line = st.empty()
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        buf = ""
        while (ch := proc.stderr.read(1)):
            if ch in "\r\n":
                if buf.strip():
                    line.code(buf.strip())
                buf = ""
            else:
                buf += ch
        if proc.wait() == 0:
            status.update(label="done", state="complete")
            st.rerun()
        else:
            status.update(label="the job failed (see above)", state="error")
