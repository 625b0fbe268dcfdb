"""SAEs as their publishers lay them out, for the tests: a numpy transcription of the published formulas (float64),
tiny random weights written with the raw libraries in every supported file layout, and where a float32 encoding may
fall either side of a decision boundary."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from analysis.sae.model import parse_hook_name

# ---- the published formulas, in numpy (float64) -----------------------------------------------------------

def np_encode(x, w: dict, arch: str, k: int | None = None, subtract_b_dec: bool = False, scale: float = 1.0,
              return_pre: bool = False):
    """Feature activations of ``x [n, d_in]`` as the papers write them (``w``: W_enc [d_in, d_sae], b_enc, b_dec,
    threshold as numpy arrays)."""
    x = np.asarray(x, dtype=np.float64) * scale
    if subtract_b_dec:
        x = x - w["b_dec"].astype(np.float64)
    pre = x @ w["W_enc"].astype(np.float64) + w["b_enc"].astype(np.float64)
    relu = np.maximum(pre, 0.0)
    if arch == "relu":
        out = relu
    elif arch == "jumprelu":
        out = relu * (pre > w["threshold"].astype(np.float64))
    elif arch == "topk":
        out = np.zeros_like(pre)
        idx = np.arange(pre.shape[-1])
        for row in range(pre.shape[0]):
            # descending by value; among equal values the lower feature index first (our documented tie rule)
            keep = np.lexsort((idx, -pre[row]))[:k]
            out[row, keep] = relu[row, keep]
    else:
        raise ValueError(arch)
    return (out, pre) if return_pre else out


def np_decode(f, w: dict, scale: float = 1.0):
    return (np.asarray(f, dtype=np.float64) @ w["W_dec"].astype(np.float64) + w["b_dec"].astype(np.float64)) / scale


# ---- tiny random SAEs, written as the publishers lay them out ----------------------------------------------

def random_weights(rng, d_in: int, d_sae: int, integer: bool = False) -> dict:
    """float32 arrays. ``integer``: small whole numbers, so every pre-activation is computed exactly in float32 and
    float64 alike and whole-number inputs give exact ties (at the TopK boundary, at the JumpReLU threshold)."""
    if integer:
        w = {"W_enc": rng.integers(-2, 3, (d_in, d_sae)), "b_enc": rng.integers(-2, 3, d_sae),
             "W_dec": rng.integers(-2, 3, (d_sae, d_in)), "b_dec": rng.integers(-1, 2, d_in),
             "threshold": rng.integers(0, 3, d_sae)}
    else:
        w = {"W_enc": rng.normal(0, 1 / math.sqrt(d_in), (d_in, d_sae)), "b_enc": rng.normal(0, 0.2, d_sae),
             "W_dec": rng.normal(0, 0.3, (d_sae, d_in)), "b_dec": rng.normal(0, 0.3, d_in),
             "threshold": rng.uniform(0.0, 0.8, d_sae)}
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in w.items()}


def _t(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a))


def write_saelens(folder: Path, cfg: dict, w: dict, with_threshold: bool, drop: tuple = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if with_threshold else [])
    save_file({n: _t(w[n]) for n in names if n not in drop}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def write_gemma_scope_1(folder: Path, w: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "params.npz", **{n: w[n] for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold") if n in w})
    return folder


def write_gemma_scope_2(folder: Path, w: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    save_file({n.lower(): _t(w[n]) for n in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")},
              str(folder / "params.safetensors"))
    return folder


def write_sparsify(folder: Path, w: dict, k: int, num_latents: bool = True, drop: tuple = ()) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    d_in, d_sae = w["W_enc"].shape
    cfg = {"expansion_factor": d_sae // d_in, "normalize_decoder": True, "num_latents": d_sae if num_latents else 0,
           "k": k, "multi_topk": False, "skip_connection": False, "d_in": d_in}
    tensors = {"encoder.weight": _t(w["W_enc"].T), "encoder.bias": _t(w["b_enc"]), "W_dec": _t(w["W_dec"]),
               "b_dec": _t(w["b_dec"])}
    save_file({n: t for n, t in tensors.items() if n not in drop}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def saelens_cfg(hook: str, architecture: str, d_in: int, d_sae: int, k: int | None = None,
                apply_b_dec: bool = False, normalize: str = "none", factor: float | None = None,
                model_name: str | None = "gpt2", prepend_bos: bool | None = True) -> dict:
    """The current SAELens config (sae_lens 6: training settings out, the rest under ``metadata``)."""
    cfg = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": normalize, "reshape_activations": "none",
           "metadata": {"model_name": model_name, "hook_name": hook, "hook_head_index": None,
                        "prepend_bos": prepend_bos, "dataset_path": "monology/pile-uncopyrighted",
                        "context_size": 128, "sae_lens_version": "6.5.1"}}
    if k is not None:
        cfg["k"] = k
    if factor is not None:
        cfg["norm_scaling_factor"] = factor
    return cfg


def saelens_flat_cfg(hook_key: str, hook: str, fn: str, d_in: int, d_sae: int, k: int | None = None,
                     apply_b_dec: bool = True, architecture: str | None = None) -> dict:
    """The older flat SAELens config (sae_lens 2..5)."""
    cfg = {"d_in": d_in, "d_sae": d_sae, "dtype": "float32", "device": "cpu", hook_key: hook,
           "hook_point_layer": parse_hook_name(hook)[0], "hook_point_head_index": None, "activation_fn_str": fn,
           "activation_fn_kwargs": {"k": k} if k is not None else {}, "apply_b_dec_to_input": apply_b_dec,
           "model_name": "gpt2-small", "prepend_bos": True, "normalize_activations": "none",
           "finetuning_scaling_factor": False, "context_size": 128}
    if architecture is not None:
        cfg["architecture"] = architecture
    return cfg


@dataclass
class Case:
    """One published layout: how to write it, and what a reader must make of it."""

    name: str
    d_in: int
    d_sae: int
    arch: str
    layer: int
    site: str
    format: str
    k: int | None = None
    subtract_b_dec: bool = False
    scale: float = 1.0
    integer: bool = False
    expect: dict = field(default_factory=dict)
    """model_name and prepend_bos as the config states them (None: it does not say)."""

    def write(self, root: Path, w: dict) -> Path:
        """Write the SAE under ``root``; return what to hand to ``load_sae``."""
        n = self.name
        if n == "saelens-standard":
            return write_saelens(root / "gpt2-res-jb" / "blocks.1.hook_resid_pre",
                                 saelens_cfg("blocks.1.hook_resid_pre", "standard", self.d_in, self.d_sae,
                                             apply_b_dec=True), w, False)
        if n == "saelens-jumprelu-scaled":
            return write_saelens(root / "blocks.2.hook_mlp_out",
                                 saelens_cfg("blocks.2.hook_mlp_out", "jumprelu", self.d_in, self.d_sae,
                                             normalize="expected_average_only_in", factor=0.25,
                                             model_name="gemma-2-2b", prepend_bos=False), w, True)
        if n == "saelens-topk":
            return write_saelens(root / "topk" / "attn",
                                 saelens_cfg("blocks.0.hook_attn_out", "topk", self.d_in, self.d_sae, k=self.k,
                                             apply_b_dec=True, prepend_bos=False), w, False)
        if n == "saelens-topk-scaled":
            return write_saelens(root / "topk-scaled",
                                 saelens_cfg("blocks.3.hook_resid_post", "topk", self.d_in, self.d_sae, k=self.k,
                                             normalize="expected_average_only_in", factor=2.0), w, False)
        if n == "saelens-flat-relu":
            return write_saelens(root / "flat-relu", saelens_flat_cfg("hook_point", "blocks.3.hook_resid_post",
                                                                      "relu", self.d_in, self.d_sae), w, False)
        if n == "saelens-flat-topk":
            return write_saelens(root / "flat-topk",
                                 saelens_flat_cfg("hook_name", "blocks.1.hook_mlp_out", "topk", self.d_in,
                                                  self.d_sae, k=self.k, architecture="standard"), w, False)
        if n == "saelens-flat-jumprelu":  # sae_lens 5 (its Gemma Scope release): flat, with an architecture
            cfg = saelens_flat_cfg("hook_name", "blocks.2.hook_resid_post", "relu", self.d_in, self.d_sae,
                                   apply_b_dec=False, architecture="jumprelu")
            cfg["normalize_activations"] = "expected_average_only_in"  # no factor given: inputs as they are
            return write_saelens(root / "flat-jumprelu", cfg, w, True)
        if n == "gemma-scope-1-res":
            return write_gemma_scope_1(root / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_71", w)
        if n == "gemma-scope-1-mlp":
            return write_gemma_scope_1(root / "gemma-scope-2b-pt-mlp" / "layer_2" / "width_16k" / "average_l0_20", w)
        if n == "gemma-scope-1-att-hub-cache":  # where snapshot_download puts google/gemma-scope-2b-pt-att/...
            return write_gemma_scope_1(root / "models--google--gemma-scope-2b-pt-att" / "snapshots" /
                                       "0123456789abcdef0123456789abcdef01234567" / "layer_0" / "width_16k" /
                                       "average_l0_35", w)
        if n == "gemma-scope-2-res":
            return write_gemma_scope_2(root / "gemma-scope-2-270m-pt" / "resid_post" / "layer_1_width_16k_l0_medium", w)
        if n == "gemma-scope-2-mlp-file":  # the params file itself named
            return write_gemma_scope_2(root / "mlp_out" / "layer_2_width_65k_l0_big", w) / "params.safetensors"
        if n == "gemma-scope-2-att":
            return write_gemma_scope_2(root / "attn_out" / "layer_0_width_16k_l0_small", w)
        if n == "sparsify-num-latents":
            return write_sparsify(root / "sae-pythia" / "layers.1", w, self.k)
        if n == "sparsify-expansion-mlp":
            return write_sparsify(root / "sae-pythia" / "layers.2.mlp", w, self.k, num_latents=False)
        raise ValueError(n)


# ---- decision boundaries --------------------------------------------------------------------------------

EPS = 1e-4
"""Pre-activations this close to a decision boundary (the TopK cut, a JumpReLU threshold, TopK's ReLU at 0) may fall
either side between two float32 computations (a batched and a single-sequence forward pass, float32 and float64);
such entries are left out of comparisons that the decision changes."""


def topk_ambiguous(pre: np.ndarray, k: int, eps: float = EPS) -> np.ndarray:
    """``[n, d_sae]`` True where TopK-then-ReLU of ``pre`` might decide otherwise under a perturbation below ``eps``:
    a near-tie at the k-th place, or a kept pre-activation near 0 (fires or not)."""
    top = -np.sort(-pre, axis=1)
    kth, next_ = top[:, k - 1 : k], top[:, k : k + 1]
    tie = (kth - next_ < eps) & ((np.abs(pre - kth) < eps) | (np.abs(pre - next_) < eps))
    return tie | ((np.abs(pre) < eps) & (pre > next_ - eps))


def ambiguous(pre: np.ndarray, case: Case, w: dict, eps: float = EPS) -> np.ndarray:
    """``[n, d_sae]`` True where ``case``'s activation function might decide otherwise under a perturbation of the
    pre-activations ``pre`` below ``eps``."""
    if case.arch == "jumprelu":
        return np.abs(pre - w["threshold"]) < eps
    if case.arch == "topk":
        return topk_ambiguous(pre, case.k, eps)
    return np.abs(pre) < eps  # ReLU: fires or not
