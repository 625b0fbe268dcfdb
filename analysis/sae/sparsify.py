"""EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``): ReLU then TopK, the hook from the folder name."""

from __future__ import annotations

import json
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, SITES, need, parse_hook_name, tensors_of

def load_sparsify(folder: Path, layer: int | None, site: str | None) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    t = tensors_of(folder / "sae.safetensors")
    enc_w, enc_b, W_dec, b_dec = need(t, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), folder / "sae.safetensors")
    if "W_skip" in t or cfg.get("skip_connection") or cfg.get("transcode"):
        raise UserError(f"{folder}: a sparsify transcoder (skip connection or transcode=true) reads one site and "
                        "writes another; only autoencoders of one site are supported")
    n = enc_w.shape[0]
    if cfg.get("num_latents") and int(cfg["num_latents"]) != n:
        raise UserError(f"{folder}: cfg.json says num_latents={cfg['num_latents']} but encoder.weight has {n} rows")
    if not cfg.get("num_latents") and cfg.get("expansion_factor") and int(cfg["expansion_factor"]) * enc_w.shape[1] != n:
        raise UserError(f"{folder}: cfg.json says expansion_factor={cfg['expansion_factor']} but encoder.weight is "
                        f"{tuple(enc_w.shape)}")
    if cfg.get("k") is None:
        raise UserError(f"{folder / 'cfg.json'}: a sparsify SAE config needs k")
    if layer is None or site is None:
        try:
            hook_layer, hook_site = parse_hook_name(folder.name)
        except UserError:
            raise UserError(f"{folder}: a sparsify folder is named after its hook (layers.12, layers.12.mlp); give "
                            f"the site instead: --sae {folder}#layer=L,site={'|'.join(SITES)}") from None
        layer = hook_layer if layer is None else layer
        site = hook_site if site is None else site
    return SAE(W_enc=enc_w.T.contiguous(), b_enc=enc_b, W_dec=W_dec, b_dec=b_dec, architecture="topk",
               k=int(cfg["k"]), layer=layer, site=site, apply_b_dec_to_input=True, format="sparsify")
