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


@pytest.fixture(scope="session")
def viewer_db(tiny_folders, tmp_path_factory):
    """A real harvest of the tiny GPT-2 over text that contains HTML (for escaping checks): (db path, model name)."""
    import json
    import random

    from analysis.__main__ import main
    from helpers import TINY_TEXT

    root = tmp_path_factory.mktemp("viewer_db")
    corpus = root / "docs.jsonl"
    rng = random.Random(1)
    with open(corpus, "w") as f:
        for i in range(24):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(10))}) + "\n")
    db = root / "viewer.duckdb"
    model = str(tiny_folders["gpt2"])
    assert main(["harvest", "--model", model, "--corpus", str(corpus), "--db", str(db), "--layers", "0,1",
                 "--seq-len", "24", "--quiet"]) == 0
    return db, model


@pytest.fixture(scope="session")
def n2g_db(viewer_db, tmp_path_factory):
    """A copy of viewer_db with Neuron2Graph graphs for neurons 0-11 of layer 1 (augmentation on)."""
    import shutil

    from analysis.__main__ import main

    db, model = viewer_db
    copy = tmp_path_factory.mktemp("n2g_db") / "n2g.duckdb"
    shutil.copy(db, copy)
    assert main(["n2g", "--db", str(copy), "--model", model, "--layer", "1", "--neurons", "0-11", "--quiet"]) == 0
    return copy, model


def random_topk_sae(d_in: int, d_sae: int, k: int, layer: int, site: str = "resid_post", seed: int = 0):
    """A random TopK SAE (analysis.sae.SAE) with decoder rows of unit norm."""
    from analysis.sae import SAE, _finish

    g = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(d_sae, d_in, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    sae = SAE(W_enc=W_dec.T.contiguous(), b_enc=torch.randn(d_sae, generator=g) * 0.1, W_dec=W_dec,
              b_dec=torch.randn(d_in, generator=g) * 0.1, architecture="topk", k=k, layer=layer, site=site,
              apply_b_dec_to_input=True, name="tiny-sae")
    return _finish(sae)


@pytest.fixture(scope="session")
def sae_db(viewer_db, tmp_path_factory):
    """A copy of viewer_db with a random tiny TopK SAE (64 features over resid_post of layer 1, saved in the
    SAELens layout) harvested beside the neurons: (db path, model name, SAE folder)."""
    import shutil

    from analysis.__main__ import main
    from analysis.sae import save_sae

    db, model = viewer_db
    root = tmp_path_factory.mktemp("sae_db")
    copy = root / "sae.duckdb"
    shutil.copy(db, copy)
    folder = save_sae(random_topk_sae(32, 64, 4, layer=1), root / "tiny-sae")
    corpus = Path(db).parent / "docs.jsonl"
    assert main(["harvest", "--model", model, "--corpus", str(corpus), "--db", str(copy), "--sae", str(folder),
                 "--seq-len", "24", "--quiet"]) == 0
    return copy, model, folder
