"""Any SAE by folder, file or hub id (``load_sae``), and the dictionaries a cache row describes."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path


from analysis.config import relocated
from analysis.types import DictionaryInfo, UserError
from analysis.sae.model import SAE, SITES, finish
from analysis.sae.saelens import SAELENS_WEIGHTS, load_saelens
from analysis.sae.gemma_scope import load_gemma_scope
from analysis.sae.sparsify import load_sparsify
from analysis.sae.baselines import baseline_dictionary

def parse_sae_spec(spec: str) -> tuple[str, int | None, str | None]:
    """``DIR_OR_ID[#layer=L,site=S]`` -> (where, layer, site)."""
    where, _, extra = spec.partition("#")
    layer = site = None
    for part in filter(None, (p.strip() for p in extra.split(","))):
        key, _, value = part.partition("=")
        if key == "layer" and value.isdigit():
            layer = int(value)
        elif key == "site" and value in SITES:
            site = value
        else:
            raise UserError(f"bad SAE option {part!r} in {spec!r}: use #layer=L,site={'|'.join(SITES)}")
    return where, layer, site


def load_sae(spec: str, layer: int | None = None, site: str | None = None) -> SAE:
    """Load an SAE from a folder (any format above), or a hub id ``org/repo[/subfolder]`` when the network allows.
    ``spec`` may end in ``#layer=L,site=S`` for folders whose path does not say."""
    where, spec_layer, spec_site = parse_sae_spec(spec)
    layer = spec_layer if layer is None else layer
    site = spec_site if site is None else site
    folder = Path(where).expanduser()
    if not folder.exists():
        folder = _from_hub(where)
    if folder.is_file():
        folder, file = folder.parent, folder
    else:
        file = None
    if file is None and (folder / "cfg.json").exists() and (folder / SAELENS_WEIGHTS).exists():
        sae = load_saelens(folder)
        if layer is not None or site is not None:
            sae = replace(sae, layer=sae.layer if layer is None else layer, site=sae.site if site is None else site)
    elif file is None and (folder / "cfg.json").exists() and (folder / "sae.safetensors").exists():
        sae = load_sparsify(folder, layer, site)
    elif file is not None and file.name in ("params.npz", "params.safetensors"):
        sae = load_gemma_scope(folder, file, layer, site)
    elif (folder / "params.npz").exists() or (folder / "params.safetensors").exists():
        file = folder / ("params.npz" if (folder / "params.npz").exists() else "params.safetensors")
        sae = load_gemma_scope(folder, file, layer, site)
    else:
        raise UserError(f"{folder} holds no SAE or transcoder this viewer reads: expected cfg.json + "
                        "sae_weights.safetensors (SAELens), params.npz / params.safetensors (Gemma Scope 1/2) or "
                        "cfg.json + sae.safetensors (EleutherAI sparsify)")
    sae.path = str(folder.resolve())
    sae.name = sae.name if sae.name != "sae" else _display_name(folder)
    return finish(sae)


def _display_name(folder: Path) -> str:
    name = folder.name
    if re.fullmatch(r"(layers|h)\.\d+.*|average_l0_\d+|width_\w+", name) and folder.parent.name:
        name = f"{folder.parent.name}-{name}"
    return re.sub(r"[^\w.\-]+", "-", name).strip("-") or "sae"


def _from_hub(repo_path: str) -> Path:
    parts = repo_path.strip("/").split("/")
    if len(parts) < 2 or repo_path.startswith((".", "/", "~")):
        raise UserError(f"SAE folder not found: {repo_path}")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(repo, allow_patterns=[f"{sub}/*"] if sub else None)
    except Exception as exc:  # offline, unknown repo, gated repo: all the user's to fix
        raise UserError(f"SAE {repo_path!r} is not a local folder and could not be fetched from the hub "
                        f"(offline?): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return Path(root) / sub if sub else Path(root)


def dictionary_info(sae: SAE, model_id: str) -> DictionaryInfo:
    """What the cache stores about a dictionary (its weights stay in their folder)."""
    return DictionaryInfo(source=sae.source, model_id=model_id, name=sae.name, format=sae.format,
                          architecture=sae.architecture, layer=sae.layer, site=sae.site, d_in=sae.d_in,
                          d_sae=sae.d_sae, k=sae.k, path=sae.path,
                          meta={**sae.meta, "output_site": sae.output_site} if sae.is_transcoder else sae.meta)


def load_dictionary(info: DictionaryInfo) -> SAE:
    """The dictionary a cache row describes: rebuilt (a baseline) or loaded from its folder, refusing weights that
    changed since the harvest."""
    if info.format == "baseline":
        sae = baseline_dictionary(info.meta["baseline"], info.d_in, info.layer, info.site, info.d_sae,
                                  info.meta.get("seed", 0))
    else:
        folder = relocated(info.path)
        if not folder.exists():
            raise UserError(f"the weights of {info.source} are gone from {info.path}: restore the folder, or harvest "
                            "the SAE again from where it is now")
        sae = load_sae(f"{folder}#layer={info.layer},site={info.site}")
        sae.name = info.name
    if sae.source != info.source:
        raise UserError(f"{info.path} now holds other weights than {info.source} (harvested from it): harvest again")
    sae.meta = {**sae.meta, **info.meta}
    return sae
