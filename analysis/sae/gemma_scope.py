"""Gemma Scope 1 (``params.npz``) and 2 (``params.safetensors``) files: JumpReLU, site and layer from the path.

Transcoders: Gemma Scope 1's (``gemma-scope-2b-pt-transcoders/layer_12/width_16k/average_l0_71/params.npz``) and
Gemma Scope 2's (``transcoder[_all|_affine…]/layer_12_width_16k_l0_small/params.safetensors``, with a
``config.json`` naming ``hf_hook_point_in`` = ``model.layers.12.pre_feedforward_layernorm.output`` and
``hf_hook_point_out`` = ``model.layers.12.post_feedforward_layernorm.output``; an affine one adds
``affine_skip_connection [d_in, d_out]``, the output gaining ``x @ affine_skip_connection``). Both read the MLP's
normed input and write its (post-normed) output."""

from __future__ import annotations

import json
import re
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, SITES, need, parse_hook_name, refuse_extra, tensors_of

_SITE_FOLDER = re.compile(r"(resid_pre|resid_post|mlp_out|attn_out|transcoder)(?:_\w+)?")  # Gemma Scope 2: resid_post[_all]
_SCOPE_REPO = re.compile(r"gemma-scope-.+?-(res|mlp|att|transcoders)(?:-[a-z0-9]+)*$")  # gemma-scope-2b-pt-res
_SCOPE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out", "transcoders": "transcoder",
                "transcoder": "transcoder"}
TRANSCODER = "transcoder"
"""What ``site_from_path`` says of a transcoder's folder (it reads ``mlp_input`` and writes ``mlp_out``)."""


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
                site = _SCOPE_SITES.get(m.group(1), m.group(1))
            elif m := _SCOPE_REPO.search(part):
                site = _SCOPE_SITES[m.group(1)]
        if layer is not None and site is not None:
            break
    return layer, site


_NAMES = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
SKIP = "affine_skip_connection"


def load_gemma_scope(folder: Path, file: Path, layer: int | None, site: str | None) -> SAE:
    t = tensors_of(file)
    lower = {k.lower(): v for k, v in t.items()}
    if "threshold" not in lower:
        raise UserError(f"{file} has no threshold tensor: a Gemma Scope file is JumpReLU and cannot be read without "
                        f"its thresholds (it has {', '.join(sorted(t)) or 'nothing'}); is the download complete?")
    W_enc, W_dec, b_enc, b_dec, threshold = need(lower, _NAMES, file)
    path_layer, path_site = site_from_path(file)
    cfg, out_site = {}, None
    if (folder / "config.json").exists():
        cfg = json.loads((folder / "config.json").read_text())
        hook = cfg.get("hf_hook_point_in") or cfg.get("hook_name")
        if hook:
            try:
                path_layer, path_site = parse_hook_name(str(hook))
            except UserError:
                pass
        out_hook = cfg.get("hf_hook_point_out")
        if out_hook and out_hook != hook:  # an SAE's config names its one site twice
            try:
                out_layer, out_site = parse_hook_name(str(out_hook))
            except UserError:
                raise UserError(f"{folder / 'config.json'}: hf_hook_point_out {out_hook!r} is not a site this "
                                "viewer reads") from None
            if out_layer != path_layer:
                raise UserError(f"{folder / 'config.json'}: it reads layer {path_layer} but writes layer {out_layer}: "
                                "only transcoders within one layer's MLP are supported")
    if path_site == TRANSCODER or SKIP in lower or cfg.get("affine_connection"):
        path_site, out_site = "mlp_input", out_site or "mlp_out"
    layer = path_layer if layer is None else layer
    site = path_site if site is None else site
    if layer is None or site is None:
        raise UserError(f"{file}: cannot tell its layer and site from the path; give them: --sae {folder}#layer=L,"
                        f"site={'|'.join(SITES)}")
    skip = lower.get(SKIP)
    if cfg.get("affine_connection") and skip is None:
        raise UserError(f"{file}: its config.json says affine_connection, but the file has no {SKIP} tensor")
    refuse_extra(lower, _NAMES + ((SKIP,) if skip is not None else ()), file, "Gemma Scope JumpReLU dictionary")
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture="jumprelu",
               layer=layer, site=site, apply_b_dec_to_input=False,
               format="gemma-scope" if file.suffix == ".npz" else "gemma-scope-2",
               model_name=cfg.get("model_name"), output_site=out_site,
               W_skip=None if skip is None else skip.T.contiguous())
