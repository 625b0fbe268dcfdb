"""The SAELens folder layout (``cfg.json`` + ``sae_weights.safetensors``): read, current and older configs, and
written (what ``sae train`` saves) the way SAELens 6.x writes it, so ``SAE.load_from_disk`` reads every field.

Transcoders: SAELens 6.x's ``transcoder`` (ReLU), ``skip_transcoder``, ``jumprelu_transcoder`` and
``jumprelu_skip_transcoder`` (``d_out``, ``metadata.hook_name_out``, ``W_skip [d_out, d_in]``). SAELens has no TopK
transcoder class: a TopK transcoder is written as ``topk`` with ``apply_b_dec_to_input: false`` and
``metadata.hook_name_out`` (SAELens' TopK SAE then encodes and decodes it exactly; the output hook is kept in its
metadata), and any config whose ``hook_name_out`` differs from its ``hook_name`` is read as a transcoder."""

from __future__ import annotations

import json
from pathlib import Path


from analysis.types import UserError
from analysis.sae.model import SAE, hook_name, need, parse_hook_name, refuse_extra, tensors_of

SAELENS_WEIGHTS = "sae_weights.safetensors"
SAELENS_VERSION = "6.54.12"
"""The SAELens release whose layout ``save_sae`` writes (its ``metadata.sae_lens_version``: without one, SAELens
takes its legacy path and drops the metadata -- hook name, model name, prepend_bos)."""
_TRANSCODERS = {"transcoder": ("relu", False), "skip_transcoder": ("relu", True),
                "jumprelu_transcoder": ("jumprelu", False), "jumprelu_skip_transcoder": ("jumprelu", True)}


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


def _get(cfg: dict, meta: dict, *keys: str):
    """The first of ``keys`` set in the config's metadata or at its top level (older configs are flat)."""
    return next((v for k in keys for v in (meta.get(k), cfg.get(k)) if v), None)


def _site_of(hf: str | None, hook: str) -> tuple[int, str]:
    """(layer, site) of a hook, from its HF module path where SAELens keeps one (it says exactly which tensor: its
    Gemma Scope 2 transcoders name their normed MLP input ``blocks.L.hook_mlp_in``, which in TransformerLens is
    before the norm), else from its TransformerLens name."""
    if hf:
        try:
            return parse_hook_name(hf)
        except UserError:
            pass
    return parse_hook_name(hook)


def _output_site(cfg: dict, meta: dict, layer: int, where: Path) -> str | None:
    """A transcoder's output site (its ``hook_name_out``); None for an autoencoder."""
    arch = str(cfg.get("architecture") or "").lower()
    hook_in = _get(cfg, meta, "hook_name", "hook_point")
    hook_out = _get(cfg, meta, "hook_name_out")
    if not hook_out or hook_out == hook_in:
        if arch in _TRANSCODERS:
            raise UserError(f"{where}: a {arch} config needs metadata.hook_name_out (the site it writes)")
        return None
    out_layer, out_site = _site_of(_get(cfg, meta, "hf_hook_name_out"), hook_out)
    if out_layer != layer:
        raise UserError(f"{where}: it reads layer {layer} but writes layer {out_layer}: only transcoders within one "
                        "layer's MLP are supported")
    return out_site


def load_saelens(folder: Path) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    hook = _get(cfg, meta, "hook_name", "hook_point")
    if not hook:
        raise UserError(f"{folder / 'cfg.json'} names no hook (metadata.hook_name, hook_name or hook_point)")
    layer, site = _site_of(_get(cfg, meta, "hf_hook_name"), hook)
    arch = str(cfg.get("architecture") or "").lower()
    architecture, skip = _TRANSCODERS[arch] if arch in _TRANSCODERS else (None, False)
    k = None
    if architecture is None:
        architecture, k = _architecture_of_saelens(cfg, folder / "cfg.json")
    output_site = _output_site(cfg, meta, layer, folder / "cfg.json")
    wanted = ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if architecture == "jumprelu" else ()) + (
        ("W_skip",) if skip else ())
    t = tensors_of(folder / SAELENS_WEIGHTS)
    refuse_extra(t, wanted, folder / SAELENS_WEIGHTS, arch or architecture)
    W_enc, b_enc, W_dec, b_dec = need(t, wanted[:4], folder / SAELENS_WEIGHTS)
    threshold = need(t, ("threshold",), folder / SAELENS_WEIGHTS)[0] if architecture == "jumprelu" else None
    W_skip = need(t, ("W_skip",), folder / SAELENS_WEIGHTS)[0] if skip else None
    prepend = meta.get("prepend_bos", cfg.get("prepend_bos"))
    context = meta.get("context_size", cfg.get("context_size"))
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture=architecture,
               k=k, layer=layer, site=site, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
               input_scale=_input_scale(cfg, folder / "cfg.json"), format="saelens",
               model_name=meta.get("model_name") or cfg.get("model_name"),
               prepend_bos=None if prepend is None else bool(prepend), output_site=output_site, W_skip=W_skip,
               context_size=None if context is None else int(context),
               meta={k_: v for k_, v in (cfg.get("training") or {}).items()})


def _saelens_architecture(sae: SAE) -> str:
    if not sae.is_transcoder:
        return {"relu": "standard"}.get(sae.architecture, sae.architecture)
    if sae.architecture == "topk":
        if sae.W_skip is not None:
            raise UserError("SAELens has no TopK skip-transcoder: this transcoder cannot be written in its layout")
        return "topk"  # SAELens' TopK SAE encodes/decodes it exactly; metadata.hook_name_out says where it writes
    names = {v: k for k, v in _TRANSCODERS.items()}
    if (sae.architecture, sae.W_skip is not None) not in names:
        raise UserError(f"SAELens has no {sae.architecture} transcoder")
    return names[(sae.architecture, sae.W_skip is not None)]


def save_sae(sae: SAE, folder: Path, dataset: str | None = None, context_size: int | None = None,
             training: dict | None = None) -> Path:
    """Write ``sae`` as a SAELens 6.x folder (``cfg.json`` + ``sae_weights.safetensors``) that SAELens loads with
    every field (hook names, model name, prepend_bos, context size, dtype, architecture, normalisation). An input
    scale is folded into the weights (``normalize_activations: none``), as SAELens does when it saves."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    s = float(sae.input_scale)
    metadata = {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": None,
                "model_name": sae.model_name, "hook_name": hook_name(sae.layer, sae.site), "hook_head_index": None,
                "prepend_bos": sae.prepend_bos, "dataset_path": dataset,
                "context_size": context_size if context_size is not None else sae.context_size}
    cfg = {
        "architecture": _saelens_architecture(sae), "d_in": sae.d_in, "d_sae": sae.d_sae, "dtype": "float32",
        "device": "cpu", "apply_b_dec_to_input": sae.apply_b_dec_to_input, "normalize_activations": "none",
        "reshape_activations": "none", "metadata": metadata,
    }
    if sae.is_transcoder:
        metadata["hook_name_out"] = hook_name(sae.layer, sae.output_site)
        metadata["hook_head_index_out"] = None
        if cfg["architecture"] != "topk":
            cfg["d_out"] = sae.d_out
    if sae.architecture == "topk":
        cfg["k"] = int(sae.k)
        cfg["rescale_acts_by_decoder_norm"] = False
    if training:
        cfg["training"] = training
    o = sae.output_scale  # a transcoder's output is not scaled
    tensors = {"W_enc": sae.W_enc * s, "b_enc": sae.b_enc, "W_dec": sae.W_dec / o, "b_dec": sae.b_dec / o}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    tmp = folder / (SAELENS_WEIGHTS + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / SAELENS_WEIGHTS)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return folder
