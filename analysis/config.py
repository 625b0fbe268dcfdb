"""Where the project keeps its data products, and defaults that several stages share (torch-free: the CLI's
parser reads them).

Everything the project builds (converted models, cleaned corpora, downloaded wheels, the demo database)
lives under one data folder: ``$NEURON_VIEWER_HOME`` if set, else the repository's git-ignored ``data/`` folder.
Checkouts made before that folder existed kept them inside the ``cache/`` package: ``move_old_layout`` (run by
``make setup``) moves them over, so nobody rebuilds. Stdlib only: ``make`` runs this module before the venv exists.
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder for converted models, corpora, wheels and databases."""
    return Path(os.environ.get("NEURON_VIEWER_HOME", REPO_ROOT / "data")).resolve()


OLD_DATA = REPO_ROOT / "cache"
"""Where data products lived before ``data/``: inside the store package's folder."""
OLD_PATTERNS = ("models", "corpora", "wheels", "saes", "downloads", "*.duckdb", "*.duckdb.*")
"""What ``move_old_layout`` moves from there (the package's own files are ``*.py`` and stay)."""


def move_old_layout(old: Path = OLD_DATA, new: Path | None = None) -> list[str]:
    """Move the data products an older checkout kept in ``cache/`` into the data folder (``data_dir()``); returns
    the names moved. A name already present in the data folder is left where it is (and said), and nothing moves
    while an old background build still runs (its process would lose its files)."""
    new = data_dir() if new is None else new
    found = sorted({p for pattern in OLD_PATTERNS for p in old.glob(pattern)})
    if not found:
        return []
    for pid_file in old.glob("*.duckdb.build.pid"):
        try:
            os.kill(int(pid_file.read_text().strip()), 0)
        except (ValueError, ProcessLookupError, PermissionError):
            continue
        raise SystemExit(f"a build started from the old layout still runs (process {pid_file.read_text().strip()}, "
                         f"{pid_file}): stop it, then run make again to move {old}'s data to {new}")
    new.mkdir(parents=True, exist_ok=True)
    moved = []
    for path in found:
        target = new / path.name
        if target.exists():
            print(f"{path} left in place: {target} exists already", file=sys.stderr)
            continue
        shutil.move(str(path), str(target))
        moved.append(path.name)
    return moved


def relocated(path: str) -> Path:
    """A path stored by an older checkout (an SAE's folder under ``cache/``), where ``move_old_layout`` put it."""
    p = Path(path)
    if not p.exists() and p.is_relative_to(OLD_DATA):
        moved = data_dir() / p.relative_to(OLD_DATA)
        if moved.exists():
            return moved
    return p


def default_db() -> Path:
    """The demo database: what the viewer opens when nothing else is named."""
    return data_dir() / "demo.duckdb"


DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CORPUS = "enwiki-sample"
CODE_VERSION = "0.1.0"


@dataclass(frozen=True)
class HarvestConfig:
    """Parameters of one harvest; stored with the run."""

    layers: tuple[int, ...] = ()
    """The layers to harvest (a job sets them from its layer spec)."""
    seq_len: int = 64
    """Tokens per window (OpenAI's records are 64 tokens)."""
    top_k: int = 30
    """Top-activating windows kept per unit. The explainers and every scored set use the first 20 (OpenAI's
    count, ``analysis.splits``); the 10 past them are Neuron2Graph's extra train records (``N2GConfig.extra_records``:
    better graphs at depth, bench/RESULTS.md)."""
    random_k: int = 20
    """Size of each unit's uniform random sample (OpenAI's random_sample)."""
    quantile_bins: int = 5
    per_bin: int = 5
    """Random windows kept per quantile bin (OpenAI's random_sample_by_quantile)."""
    pool: int = 50
    """Uniform random windows kept per unit, from which random and quantile samples are drawn."""
    batch_size: int | None = None
    """Windows per forward pass; None: 32 on the CPU (at its forward floor already), 256 on a GPU (the harvest's
    small per-layer kernels are then a small share of each pass: 1.7x the forward floor vs 2.4x at 64 windows on an
    H200, bench/RESULTS.md)."""
    checkpoint_seconds: float = 120.0
    """Seconds between checkpoints of a pass (at a batch's end; longer when a save is slow: at most a tenth of the
    time goes to saving). An interrupted harvest resumes from its last checkpoint."""
    token_table: int = 4096
    """Most frequent corpus tokens whose per-unit mean activation is tracked (4 bytes per unit each: with
    4,096 tokens over half of a unit's harvest state)."""
    min_token_count: int = 3
    """A token needs this many occurrences to get a mean activation."""
    seed: int = 0
    """Seed for window selection and random samples."""

    def batch_for(self, device) -> int:
        """The batch size on ``device`` (``batch_size``, else its default there)."""
        return self.batch_size or (256 if str(device).startswith("cuda") else 32)


def main(argv: list[str]) -> int:
    """``make setup``: ``python -m analysis.config [OLD_FOLDER]`` moves an old layout's data (default: ``cache/``)."""
    old = Path(argv[0]) if argv else OLD_DATA
    names = move_old_layout(old)
    if names:
        print(f"moved {', '.join(names)} from {old} to {data_dir()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
