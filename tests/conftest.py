"""Shared fixtures, and each test marked by its folder: tests/unit, tests/integration, tests/browser (`pytest -m unit`
runs the fast ones; `pytest tests` runs all)."""

from pathlib import Path

import pytest
import torch

from tests.helpers import KINDS, TINY_TEXT, random_topk_sae, tiny_model_folder

torch.set_num_threads(2)

TESTS = Path(__file__).resolve().parent
FOLDERS = ("unit", "integration", "browser")


def pytest_collection_modifyitems(config, items):
    for item in items:
        try:
            folder = Path(item.path).resolve().relative_to(TESTS).parts[0]
        except ValueError:  # not under tests/
            continue
        if folder not in FOLDERS:
            raise pytest.UsageError(f"{item.nodeid}: a test module belongs in tests/unit, tests/integration or "
                                    "tests/browser (its folder is its kind)")
        item.add_marker(getattr(pytest.mark, folder))


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


@pytest.fixture(scope="session")
def sae_db(viewer_db, tmp_path_factory):
    """A copy of viewer_db with a random tiny TopK SAE (64 features over resid_post of layer 1, saved in the
    SAELens layout) harvested beside the neurons: (db path, model name, SAE folder)."""
    import shutil

    from analysis.__main__ import main
    from analysis.sae.saelens import save_sae

    db, model = viewer_db
    root = tmp_path_factory.mktemp("sae_db")
    copy = root / "sae.duckdb"
    shutil.copy(db, copy)
    folder = save_sae(random_topk_sae(32, 64, 4, layer=1), root / "tiny-sae")
    corpus = Path(db).parent / "docs.jsonl"
    assert main(["harvest", "--model", model, "--corpus", str(corpus), "--db", str(copy), "--sae", str(folder),
                 "--seq-len", "24", "--quiet"]) == 0
    return copy, model, folder


@pytest.fixture(scope="session")
def transcoder_db(viewer_db, tmp_path_factory):
    """A copy of viewer_db with a random TopK transcoder of layer 1 (64 features, MLP normed input to MLP output,
    saved in the SAELens layout as ``tiny-tc``) harvested beside the neurons: (db path, model name, folder, the
    transcoder)."""
    import shutil

    from analysis.__main__ import main
    from analysis.sae.model import SAE, finish
    from analysis.sae.saelens import save_sae

    db, model = viewer_db
    root = tmp_path_factory.mktemp("transcoder_db")
    copy = root / "transcoder.duckdb"
    shutil.copy(db, copy)
    g = torch.Generator().manual_seed(41)
    tc = finish(SAE(W_enc=torch.randn(32, 64, generator=g) / 32 ** 0.5, b_enc=torch.randn(64, generator=g) * 0.1,
                    W_dec=torch.randn(64, 32, generator=g) * 2.0, b_dec=torch.randn(32, generator=g) * 0.1,
                    architecture="topk", k=4, layer=1, site="mlp_input", output_site="mlp_out", name="tiny-tc"))
    folder = save_sae(tc, root / "tiny-tc")
    corpus = Path(db).parent / "docs.jsonl"
    assert main(["harvest", "--model", model, "--corpus", str(corpus), "--db", str(copy), "--sae", str(folder),
                 "--seq-len", "24", "--quiet"]) == 0
    return copy, model, folder, tc


@pytest.fixture(scope="module")
def server():
    """A small OpenAI-compatible server on 127.0.0.1 (tests/openai_server.py): a fast explainer and simulator."""
    from tests.openai_server import serve

    with serve() as url:
        yield url


@pytest.fixture(scope="session")
def sae_train_corpus(tmp_path_factory):
    """40 documents of the tiny sentences (JSONL) for SAE training."""
    import json
    import random

    path = tmp_path_factory.mktemp("sae_corpus") / "docs.jsonl"
    rng = random.Random(2)
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(6))}) + "\n")
    return path
