"""Gemma Scope 1 (``params.npz``) and 2 (``params.safetensors``) files: JumpReLU, site and layer from the path."""

from __future__ import annotations

import json
import re
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, SITES, need, parse_hook_name, tensors_of

_SITE_FOLDER = re.compile(r"(resid_pre|resid_post|mlp_out|attn_out)(?:_\w+)?")  # Gemma Scope 2: resid_post[_all]
_SCOPE_REPO = re.compile(r"gemma-scope-.+?-(res|mlp|att)(?:-[a-z0-9]+)*$")  # Gemma Scope 1: gemma-scope-2b-pt-res
_SCOPE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out"}


def site_from_path(path: Path) -> tuple[int | None, str | None]:
    """Layer and site from the folders above a Gemma Scope file, nearest first, each folder name read whole:
    ``gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_71/`` (also as the hub cache names the repo:
    ``models--google--gemma-scope-2b-pt-res/snapshots/<hash>/layer_12/…``), ``resid_post/layer_12_width_16k…/``.
    Words inside unrelated folder names (``features_``, ``scores_``) say nothing."""
    layer = site = None
    for part in reversed([p.lower() for p in path.parts[:-1]]):
        if layer is None and (m := re.fullmatch(r"layer_(\d+)(?:_\w+)?", part)):
            layer = int(m.group(1))
        if site is None:
            if m := _SITE_FOLDER.fullmatch(part):
                site = m.group(1)
            elif m := _SCOPE_REPO.search(part):
                site = _SCOPE_SITES[m.group(1)]
        if layer is not None and site is not None:
            break
    return layer, site


def load_gemma_scope(folder: Path, file: Path, layer: int | None, site: str | None) -> SAE:
    t = tensors_of(file)
    lower = {k.lower(): v for k, v in t.items()}
    W_enc, W_dec, b_enc, b_dec, threshold = need(lower, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"), file)
    path_layer, path_site = site_from_path(file)
    cfg = {}
    if (folder / "config.json").exists():
        cfg = json.loads((folder / "config.json").read_text())
        hook = cfg.get("hf_hook_point_in") or cfg.get("hook_name")
        if hook:
            try:
                path_layer, path_site = parse_hook_name(str(hook))
            except UserError:
                pass
    layer = path_layer if layer is None else layer
    site = path_site if site is None else site
    if layer is None or site is None:
        raise UserError(f"{file}: cannot tell its layer and site from the path; give them: --sae {folder}#layer=L,"
                        f"site={'|'.join(SITES)}")
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture="jumprelu",
               layer=layer, site=site, apply_b_dec_to_input=False,
               format="gemma-scope" if file.suffix == ".npz" else "gemma-scope-2",
               model_name=cfg.get("model_name"))
