"""EleutherAI sparsify folders (``cfg.json`` + ``sae.safetensors``): ReLU then TopK, the hook from the folder name.
A transcoder (``transcode: true``, named after its MLP, ``layers.12.mlp``) reads the MLP's input without subtracting
``b_dec`` and predicts its output; a skip-transcoder adds ``x @ W_skip.T`` (``W_skip [d_out, d_in]``)."""

from __future__ import annotations

import json
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, SITES, need, parse_hook_name, refuse_extra, tensors_of

def load_sparsify(folder: Path, layer: int | None, site: str | None) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    t = tensors_of(folder / "sae.safetensors")
    names = ("encoder.weight", "encoder.bias", "W_dec", "b_dec")
    enc_w, enc_b, W_dec, b_dec = need(t, names, folder / "sae.safetensors")
    transcoder = bool(cfg.get("transcode")) or "W_skip" in t or bool(cfg.get("skip_connection"))
    if cfg.get("skip_connection") and "W_skip" not in t:
        raise UserError(f"{folder}: cfg.json says skip_connection but sae.safetensors has no W_skip")
    refuse_extra(t, names + (("W_skip",) if "W_skip" in t else ()), folder / "sae.safetensors", "sparsify dictionary")
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
    if transcoder and site not in ("mlp_out", "mlp_input"):
        raise UserError(f"{folder}: a sparsify transcoder is named after the MLP it replaces (layers.L.mlp)")
    return SAE(W_enc=enc_w.T.contiguous(), b_enc=enc_b, W_dec=W_dec, b_dec=b_dec, architecture="topk",
               k=int(cfg["k"]), layer=layer, site="mlp_input" if transcoder else site,
               apply_b_dec_to_input=not transcoder, format="sparsify",
               output_site="mlp_out" if transcoder else None, W_skip=t.get("W_skip"))
