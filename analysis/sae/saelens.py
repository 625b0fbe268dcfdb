"""The SAELens folder layout (``cfg.json`` + ``sae_weights.safetensors``): read, current and older configs, and
written (what ``sae train`` saves)."""

from __future__ import annotations

import json
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, hook_name, need, parse_hook_name, tensors_of

SAELENS_WEIGHTS = "sae_weights.safetensors"


def _architecture_of_saelens(cfg: dict, where: Path) -> tuple[str, int | None]:
    arch = str(cfg.get("architecture") or "").lower()
    fn = str(cfg.get("activation_fn_str") or cfg.get("activation_fn") or "").lower()
    kwargs = cfg.get("activation_fn_kwargs") or {}
    k = cfg.get("k", kwargs.get("k"))
    if arch == "jumprelu":
        return "jumprelu", None
    if arch == "topk" or fn == "topk":
        if k is None:
            raise UserError(f"{where}: a TopK SAE config needs k (or activation_fn_kwargs.k)")
        return "topk", int(k)
    if arch in ("", "standard", "relu") and fn in ("", "relu"):
        return "relu", None
    raise UserError(f"{where}: SAE architecture {arch or fn!r} is not supported (supported: standard/relu, jumprelu, "
                    "topk)")


def _input_scale(cfg: dict, where: Path) -> float:
    norm = str(cfg.get("normalize_activations") or "none")
    if norm == "none":
        return 1.0
    if norm == "expected_average_only_in":
        return float(cfg.get("norm_scaling_factor") or cfg.get("scaling_factor") or 1.0)
    raise UserError(f"{where}: normalize_activations={norm!r} is not supported (supported: none, "
                    "expected_average_only_in)")


def load_saelens(folder: Path) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise UserError(f"{folder / 'cfg.json'} names no hook (metadata.hook_name, hook_name or hook_point)")
    layer, site = parse_hook_name(hook)
    architecture, k = _architecture_of_saelens(cfg, folder / "cfg.json")
    t = tensors_of(folder / SAELENS_WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = need(t, ("W_enc", "b_enc", "W_dec", "b_dec"), folder / SAELENS_WEIGHTS)
    threshold = need(t, ("threshold",), folder / SAELENS_WEIGHTS)[0] if architecture == "jumprelu" else None
    prepend = meta.get("prepend_bos", cfg.get("prepend_bos"))
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture=architecture,
               k=k, layer=layer, site=site, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
               input_scale=_input_scale(cfg, folder / "cfg.json"), format="saelens",
               model_name=meta.get("model_name") or cfg.get("model_name"),
               prepend_bos=None if prepend is None else bool(prepend),
               meta={k_: v for k_, v in (cfg.get("training") or {}).items()})


def save_sae(sae: SAE, folder: Path, dataset: str | None = None, context_size: int | None = None,
             training: dict | None = None) -> Path:
    """Write ``sae`` as a SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) other tools load."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    arch = {"relu": "standard"}.get(sae.architecture, sae.architecture)
    cfg = {
        "architecture": arch, "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32", "device": "cpu",
        "apply_b_dec_to_input": sae.apply_b_dec_to_input,
        "normalize_activations": "none" if sae.input_scale == 1.0 else "expected_average_only_in",
        "reshape_activations": "none",
        "metadata": {"model_name": sae.model_name, "hook_name": hook_name(sae.layer, sae.site),
                     "hook_head_index": None, "prepend_bos": sae.prepend_bos, "dataset_path": dataset,
                     "context_size": context_size, "sae_lens_training_version": None},
    }
    if sae.architecture == "topk":
        cfg["k"] = int(sae.k)
    if sae.input_scale != 1.0:
        cfg["norm_scaling_factor"] = sae.input_scale
    if training:
        cfg["training"] = training
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    tmp = folder / (SAELENS_WEIGHTS + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / SAELENS_WEIGHTS)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return folder
