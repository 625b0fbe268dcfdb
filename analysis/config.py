"""Where the project keeps its data products, and defaults that several stages share.

Everything the project builds (converted models, cleaned corpora, downloaded wheels, the demo database)
lives under one data folder: ``$NEURON_VIEWER_HOME`` if set, else the repository's ``cache/`` folder
(git-ignored apart from its Python files).
"""

from __future__ import annotations

import os
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
