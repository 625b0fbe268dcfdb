"""Where the project keeps its data products, and defaults that several stages share (torch-free: the CLI's
parser reads them).

Everything the project builds (converted models, cleaned corpora, downloaded wheels, the demo database)
lives under one data folder: ``$NEURON_VIEWER_HOME`` if set, else the repository's ``cache/`` folder
(git-ignored apart from its Python files).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The folder for converted models, corpora, wheels and databases."""
    return Path(os.environ.get("NEURON_VIEWER_HOME", REPO_ROOT / "cache")).resolve()


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
    shard_windows: int = 2048
    """Windows per shard: the unit of checkpointing and resuming (and of parallel work)."""
    token_table: int = 4096
    """Most frequent corpus tokens whose per-unit mean activation is tracked."""
    min_token_count: int = 3
    """A token needs this many occurrences to get a mean activation."""
    seed: int = 0

    def batch_for(self, device) -> int:
        """The batch size on ``device`` (``batch_size``, else its default there)."""
        return self.batch_size or (256 if str(device).startswith("cuda") else 32)
