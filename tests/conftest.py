import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
torch.set_num_threads(2)

from helpers import tiny_model_folder  # noqa: E402

KINDS = ["gpt2", "llama", "gemma", "neox"]


@pytest.fixture(scope="session")
def tiny_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {kind: tiny_model_folder(root / kind, kind) for kind in KINDS}


@pytest.fixture(scope="session")
def embedded_smollm2():
    """The embedded SmolLM2 (converted on first use: ~20 s once)."""
    from analysis.models import load_model

    return load_model("smollm2-135m")
