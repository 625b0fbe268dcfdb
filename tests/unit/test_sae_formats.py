"""SAEs against independent computations: every published file layout written with the raw libraries and read
back, encoded and decoded by a numpy transcription of the published formulas; the hook sites against the plain HF
forward pass; harvested features against features recomputed window by window."""

from __future__ import annotations

import json
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.activations import mlp_activations, neuron_reader, sae_reader, site_activations, unit_activations
from analysis.config import HarvestConfig
from analysis.harvest.driver import run_harvest
from analysis.harvest.summary import summarise
from analysis.models import load_model
from analysis.sae import baseline_dictionary, load_sae, parse_hook_name, save_sae, topk_relu
from analysis.types import MLP, UserError, Window
from conftest import KINDS


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


def test_the_numpy_reference_itself_on_a_hand_example():
    w = {"W_enc": np.eye(6), "b_enc": np.zeros(6), "b_dec": np.zeros(6), "threshold": np.full(6, 2.0)}
    pre = np.array([[1.0, 3.0, 3.0, 2.0, 3.0, -1.0]])
    np.testing.assert_array_equal(np_encode(pre, w, "topk", k=2), [[0, 3, 3, 0, 0, 0]])
    np.testing.assert_array_equal(np_encode(pre, w, "topk", k=4), [[0, 3, 3, 2, 3, 0]])
    np.testing.assert_array_equal(np_encode(-pre, w, "topk", k=2), [[0, 0, 0, 0, 0, 1]])  # ReLU after TopK
    np.testing.assert_array_equal(np_encode(pre, w, "jumprelu"), [[0, 3, 3, 0, 3, 0]])  # 2 is not > 2
    np.testing.assert_array_equal(np_encode(pre, w, "relu"), [[1, 3, 3, 2, 3, 0]])
    # and the code's TopK on the same example: the tie at 3 goes to the lower indices
    got = topk_relu(torch.tensor(pre, dtype=torch.float32), 2).numpy()
    np.testing.assert_array_equal(got, [[0, 3, 3, 0, 0, 0]])


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


CASES = [
    Case("saelens-standard", 16, 48, "relu", 1, "resid_pre", "saelens", subtract_b_dec=True,
         expect={"model_name": "gpt2", "prepend_bos": True}),
    Case("saelens-jumprelu-scaled", 12, 40, "jumprelu", 2, "mlp_out", "saelens", scale=0.25,
         expect={"model_name": "gemma-2-2b", "prepend_bos": False}),
    Case("saelens-topk", 8, 32, "topk", 0, "attn_out", "saelens", k=5, subtract_b_dec=True, integer=True,
         expect={"model_name": "gpt2", "prepend_bos": False}),
    Case("saelens-topk-scaled", 10, 30, "topk", 3, "resid_post", "saelens", k=7, scale=2.0, integer=True,
         expect={"model_name": "gpt2", "prepend_bos": True}),
    Case("saelens-flat-relu", 20, 64, "relu", 3, "resid_post", "saelens", subtract_b_dec=True,
         expect={"model_name": "gpt2-small", "prepend_bos": True}),
    Case("saelens-flat-topk", 8, 24, "topk", 1, "mlp_out", "saelens", k=4, subtract_b_dec=True, integer=True,
         expect={"model_name": "gpt2-small", "prepend_bos": True}),
    Case("saelens-flat-jumprelu", 16, 32, "jumprelu", 2, "resid_post", "saelens", integer=True,
         expect={"model_name": "gpt2-small", "prepend_bos": True}),
    Case("gemma-scope-1-res", 16, 48, "jumprelu", 1, "resid_post", "gemma-scope"),
    Case("gemma-scope-1-mlp", 12, 36, "jumprelu", 2, "mlp_out", "gemma-scope", integer=True),
    Case("gemma-scope-1-att-hub-cache", 8, 16, "jumprelu", 0, "attn_out", "gemma-scope"),
    Case("gemma-scope-2-res", 16, 64, "jumprelu", 1, "resid_post", "gemma-scope-2"),
    Case("gemma-scope-2-mlp-file", 8, 32, "jumprelu", 2, "mlp_out", "gemma-scope-2", integer=True),
    Case("gemma-scope-2-att", 24, 48, "jumprelu", 0, "attn_out", "gemma-scope-2"),
    Case("sparsify-num-latents", 16, 64, "topk", 1, "resid_post", "sparsify", k=6, subtract_b_dec=True),
    Case("sparsify-expansion-mlp", 8, 32, "topk", 2, "mlp_out", "sparsify", k=5, subtract_b_dec=True, integer=True),
]


def _inputs(rng, case: Case) -> np.ndarray:
    if case.integer:
        return rng.integers(-3, 4, (40, case.d_in)).astype(np.float32)
    return rng.normal(0, 1.5, (40, case.d_in)).astype(np.float32)


def _check_encode_decode(sae, case: Case, w: dict, x: np.ndarray) -> np.ndarray:
    ref, pre = np_encode(x, w, case.arch, case.k, case.subtract_b_dec, case.scale, return_pre=True)
    got = sae.encode(torch.from_numpy(x)).double().numpy()
    if case.integer:  # whole numbers throughout: exact, ties and all
        np.testing.assert_array_equal(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got != 0, ref != 0)
    # any leading shape
    got3 = sae.encode(torch.from_numpy(x).reshape(4, 10, case.d_in)).double().numpy()
    np.testing.assert_allclose(got3.reshape(40, -1), got, rtol=1e-6, atol=1e-6)
    dec = sae.decode(torch.from_numpy(ref.astype(np.float32))).double().numpy()
    np.testing.assert_allclose(dec, np_decode(ref, w, case.scale), rtol=1e-5, atol=1e-5)
    # the cases really exercise what they claim to
    if case.arch == "topk":
        assert ((ref != 0).sum(1) <= case.k).all() and ((ref != 0).sum(1) == case.k).any()
        if case.integer:  # ties straddle the k-th place with a positive value in some rows
            kth = -np.sort(-pre, axis=1)[:, case.k - 1]
            straddle = ((pre > kth[:, None]).sum(1) < case.k) & ((pre >= kth[:, None]).sum(1) > case.k) & (kth > 0)
            assert straddle.sum() >= 3
    if case.arch == "jumprelu":  # some positive pre-activations fall at or under their threshold
        assert ((pre > 0) & (pre <= w["threshold"])).any()
        if case.integer:
            assert ((pre > 0) & (pre == w["threshold"])).any()
    return ref


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_format_loads_and_encodes_as_published(tmp_path, case):
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    w = random_weights(rng, case.d_in, case.d_sae, case.integer)
    spec = case.write(tmp_path / "pub", w)
    sae = load_sae(str(spec))
    assert (sae.layer, sae.site) == (case.layer, case.site)
    assert (sae.d_in, sae.d_sae, sae.architecture, sae.format) == (case.d_in, case.d_sae, case.arch, case.format)
    assert sae.k == case.k
    for attr in ("model_name", "prepend_bos"):  # as the config says; None where the format does not say
        assert getattr(sae, attr) == case.expect.get(attr), attr
    assert sae.source.startswith("sae:") and len(sae.digest) == 64
    x = _inputs(rng, case)
    _check_encode_decode(sae, case, w, x)

    # save_sae -> load_sae: the same encoder, and a cfg.json other SAELens readers understand
    saved = save_sae(sae, tmp_path / "saved" / "mine")
    cfg = json.loads((saved / "cfg.json").read_text())
    assert cfg["architecture"] == {"relu": "standard"}.get(case.arch, case.arch)
    assert (cfg["d_in"], cfg["d_sae"]) == (case.d_in, case.d_sae)
    assert cfg["apply_b_dec_to_input"] is case.subtract_b_dec
    assert cfg["metadata"]["hook_name"] == f"blocks.{case.layer}.hook_{case.site}"
    assert cfg["metadata"]["model_name"] == case.expect.get("model_name")
    assert cfg["metadata"]["prepend_bos"] == case.expect.get("prepend_bos")
    if case.scale == 1.0:
        assert cfg["normalize_activations"] == "none" and "norm_scaling_factor" not in cfg
    else:
        assert cfg["normalize_activations"] == "expected_average_only_in"
        assert cfg["norm_scaling_factor"] == case.scale
    assert cfg.get("k") == case.k
    tensors = load_file(str(saved / "sae_weights.safetensors"))
    expected_names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if case.arch == "jumprelu" else set())
    assert set(tensors) == expected_names
    for name in expected_names:  # SAELens orientation: W_enc [d_in, d_sae], W_dec [d_sae, d_in]
        np.testing.assert_array_equal(tensors[name].numpy(), w[name])
    back = load_sae(str(saved))
    assert (back.layer, back.site, back.architecture, back.k, back.format) == (case.layer, case.site, case.arch,
                                                                                case.k, "saelens")
    xt = torch.from_numpy(x)
    assert torch.equal(back.encode(xt), sae.encode(xt))
    f = sae.encode(xt)
    assert torch.equal(back.decode(f), sae.decode(f))


def test_gemma_scope_site_comes_from_the_sae_folders_not_unrelated_parents(tmp_path):
    """A parent folder whose name merely contains 'res_' (features_, measures_, scores_) says nothing about the site."""
    rng = np.random.default_rng(5)
    w = random_weights(rng, 8, 16)
    folder = write_gemma_scope_2(tmp_path / "sae_features_cache" / "mlp_out" / "layer_2_width_16k_l0_small", w)
    sae = load_sae(str(folder))
    assert (sae.layer, sae.site) == (2, "mlp_out")


def test_sites_given_in_the_spec_override_the_path(tmp_path):
    rng = np.random.default_rng(6)
    w = random_weights(rng, 8, 16)
    folder = write_gemma_scope_1(tmp_path / "my-sae", w)
    with pytest.raises(UserError, match="cannot tell its layer and site"):
        load_sae(str(folder))
    sae = load_sae(f"{folder}#layer=4,site=attn_out")
    assert (sae.layer, sae.site) == (4, "attn_out")
    sae = load_sae(str(folder), layer=2, site="resid_pre")
    assert (sae.layer, sae.site) == (2, "resid_pre")
    with pytest.raises(UserError, match="bad SAE option"):
        load_sae(f"{folder}#layer=x")


def test_parse_hook_name_table():
    table = {"blocks.12.hook_resid_post": (12, "resid_post"), "blocks.0.hook_resid_pre": (0, "resid_pre"),
             "blocks.3.hook_mlp_out": (3, "mlp_out"), "blocks.7.hook_attn_out": (7, "attn_out"),
             "layers.12": (12, "resid_post"), "layers.4.mlp": (4, "mlp_out"), "h.2": (2, "resid_post"),
             "layers.5.self_attn": (5, "attn_out"), "h.6.attn": (6, "attn_out"),
             "gpt_neox.layers.9.attention": (9, "attn_out")}
    for name, expected in table.items():
        assert parse_hook_name(name) == expected, name
    for bad in ("blocks.1.hook_resid_mid", "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out.hook_sae_acts_post",
                "layers.3.mlp.act_fn", "embed", ""):
        with pytest.raises(UserError, match="not a supported site"):
            parse_hook_name(bad)


def test_baseline_dictionaries():
    basis = baseline_dictionary("basis", 8, layer=1)
    x = torch.randn(5, 8)
    assert torch.equal(basis.encode(x), x) and torch.allclose(basis.decode(basis.encode(x)), x)
    rand = baseline_dictionary("random", 8, layer=1, n=20, seed=3)
    W = rand.W_enc.double().numpy()
    assert W.shape == (8, 20)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rand.encode(x).double().numpy(), x.double().numpy() @ W, rtol=1e-5, atol=1e-6)
    assert torch.equal(baseline_dictionary("random", 8, layer=1, n=20, seed=3).W_enc, rand.W_enc)
    assert not torch.equal(baseline_dictionary("random", 8, layer=1, n=20, seed=4).W_enc, rand.W_enc)
    assert rand.source != basis.source
    with pytest.raises(UserError, match="unknown baseline"):
        baseline_dictionary("pca", 8, layer=1)


# ---- refusals --------------------------------------------------------------------------------------------

def _corpus(path: Path) -> Path:
    import random

    from helpers import TINY_TEXT

    rng = random.Random(1)
    with open(path, "w") as f:
        for i in range(6):
            f.write(json.dumps({"title": f"d{i}", "text": " ".join(rng.choice(TINY_TEXT) for _ in range(4))}) + "\n")
    return path


def test_harvest_refuses_an_sae_of_another_width(tiny_folders, tmp_path):
    from analysis.jobs.harvest import HarvestJob, harvest
    from analysis.progress import Progress

    rng = np.random.default_rng(7)
    corpus = _corpus(tmp_path / "docs.jsonl")
    narrow = write_saelens(tmp_path / "narrow", saelens_cfg("blocks.1.hook_resid_post", "standard", 16, 32),
                           random_weights(rng, 16, 32), False)
    job = HarvestJob(model=str(tiny_folders["gpt2"]), corpus=str(corpus), sae=(str(narrow),),
                     config=HarvestConfig(seq_len=16, batch_size=4))
    with pytest.raises(UserError, match=r"16-dimensional.*32-dimensional"):
        harvest(job, tmp_path / "db.duckdb", Progress(enabled=False))
    deep = write_saelens(tmp_path / "deep", saelens_cfg("blocks.7.hook_resid_post", "standard", 32, 32),
                         random_weights(rng, 32, 32), False)
    with pytest.raises(UserError, match="layer 7 does not exist"):
        harvest(HarvestJob(model=str(tiny_folders["gpt2"]), corpus=str(corpus), sae=(str(deep),),
                           config=HarvestConfig(seq_len=16)), tmp_path / "db2.duckdb", Progress(enabled=False))


def test_refusals_name_the_problem(tmp_path):
    rng = np.random.default_rng(8)
    w = random_weights(rng, 8, 16)

    def saelens(name, cfg, weights=w, threshold=False, drop=()):
        return str(write_saelens(tmp_path / name, cfg, weights, threshold, drop))

    cases = [
        # architectures
        (saelens("gated", saelens_cfg("blocks.1.hook_resid_post", "gated", 8, 16)), "'gated' is not supported"),
        (saelens("tanh", saelens_flat_cfg("hook_point", "blocks.1.hook_resid_post", "tanh-relu", 8, 16)),
         "'tanh-relu' is not supported"),
        (saelens("topk-no-k", saelens_cfg("blocks.1.hook_resid_post", "topk", 8, 16)), "needs k"),
        (saelens("topk-big-k", saelens_cfg("blocks.1.hook_resid_post", "topk", 8, 16, k=17)), "0 < k <= d_sae"),
        (saelens("norm", saelens_cfg("blocks.1.hook_resid_post", "standard", 8, 16, normalize="layer_norm")),
         "normalize_activations='layer_norm' is not supported"),
        # hooks
        (saelens("hook-z", saelens_cfg("blocks.1.attn.hook_z", "standard", 8, 16)), "not a supported site"),
        (saelens("no-hook", {k: v for k, v in saelens_flat_cfg("hook_point", "blocks.1.hook_resid_post", "relu", 8,
                                                                16).items() if k != "hook_point"}), "names no hook"),
        # tensors: missing, misshapen, not finite
        (saelens("no-b-dec", saelens_cfg("blocks.1.hook_resid_post", "standard", 8, 16), drop=("b_dec",)),
         "lacks b_dec"),
        (saelens("no-threshold", saelens_cfg("blocks.1.hook_resid_post", "jumprelu", 8, 16)), "lacks threshold"),
        (saelens("transposed", saelens_cfg("blocks.1.hook_resid_post", "standard", 8, 16),
                 {**w, "W_dec": np.ascontiguousarray(w["W_dec"].T)}), r"W_dec is \(8, 16\), expected \(16, 8\)"),
        (saelens("nan", saelens_cfg("blocks.1.hook_resid_post", "standard", 8, 16),
                 {**w, "W_enc": np.where(np.arange(16) == 3, np.nan, w["W_enc"]).astype(np.float32)}),
         "W_enc hold NaN or inf"),
        (str(write_gemma_scope_2(tmp_path / "resid_post" / "layer_1_width_16k_l0_small",
                                 {**w, "threshold": np.full(16, np.inf, dtype=np.float32)})),
         "threshold hold NaN or inf"),
        (str(write_gemma_scope_1(tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_9",
                                 {k: v for k, v in w.items() if k != "threshold"})), "lacks threshold"),
        (str(write_sparsify(tmp_path / "sp" / "layers.1", w, 4, drop=("encoder.bias",))), "lacks encoder.bias"),
        (str(write_sparsify(tmp_path / "sp" / "layers.2", w, 17)), "0 < k <= d_sae"),
        (str(write_sparsify(tmp_path / "sp" / "encoder-of-mine", w, 4)), "named after its hook"),
    ]
    bad_latents = write_sparsify(tmp_path / "sp" / "layers.3", w, 4)
    cfg = json.loads((bad_latents / "cfg.json").read_text())
    (bad_latents / "cfg.json").write_text(json.dumps({**cfg, "num_latents": 32}))
    cases.append((str(bad_latents), "num_latents=32 but encoder.weight has 16 rows"))
    # folders that hold no SAE
    (tmp_path / "empty").mkdir()
    cases.append((str(tmp_path / "empty"), "holds no SAE"))
    (tmp_path / "cfg-only").mkdir()
    cfg_only = saelens_cfg("blocks.1.hook_resid_post", "standard", 8, 16)
    (tmp_path / "cfg-only" / "cfg.json").write_text(json.dumps(cfg_only))
    cases.append((str(tmp_path / "cfg-only"), "holds no SAE"))
    cases.append((str(tmp_path / "no" / "such" / "folder"), "not found"))
    for spec, message in cases:
        with pytest.raises(UserError, match=message):
            load_sae(spec)


def test_hub_id_offline_is_a_user_error_quickly(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once at import
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    t0 = time.time()
    with pytest.raises(UserError, match="could not be fetched from the hub"):
        load_sae("google/gemma-scope-2b-pt-res/layer_1/width_16k/average_l0_71")
    assert time.time() - t0 < 20


# ---- sites against the plain HF forward pass --------------------------------------------------------------

SITES_ALL = ("resid_pre", "resid_post", "mlp_out", "attn_out")


def _close(got: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error, absolute below magnitude 1 and relative above it."""
    return ((got.double() - ref.double()).abs() / ref.double().abs().clamp(min=1.0)).max().item()


@pytest.mark.parametrize("kind", KINDS)
def test_sites_equal_the_plain_forward(tiny_folders, kind):
    subject = load_model(str(tiny_folders[kind]))
    n_layers = subject.info.n_layers
    torch.manual_seed(3)
    lengths = [14, 9, 4]
    ids = torch.full((3, 14), subject.pad_id)
    mask = torch.zeros((3, 14), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, len(subject.tokenizer), (n,))
        mask[row, :n] = 1
    real = mask.bool()
    with torch.no_grad():
        hs = subject.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hs) == n_layers + 1
    sites = [(layer, s) for layer in range(n_layers) for s in SITES_ALL]
    got = site_activations(subject, ids, mask, sites)
    neurons = mlp_activations(subject, ids, mask, list(range(n_layers)))
    for layer in range(n_layers):
        g = {s: got[(layer, s)][real] for s in SITES_ALL}
        assert all(v.shape == (sum(lengths), subject.d_model) for v in g.values())
        assert _close(g["resid_pre"], hs[layer][real]) <= 1e-5, layer
        if layer < n_layers - 1:
            assert _close(g["resid_post"], hs[layer + 1][real]) <= 1e-5, layer
        else:  # HF applies the final norm to the last hidden state
            with torch.no_grad():
                normed = subject.final_norm()(got[(layer, "resid_post")])
            assert _close(normed[real], hs[layer + 1][real]) <= 1e-5
        # both sublayers write into the one residual stream (NeoX's parallel residual included)
        delta = g["resid_post"].double() - g["resid_pre"].double()
        assert _close(g["attn_out"] + g["mlp_out"].double(), delta) <= 1e-5, layer
        # mlp_out is the output projection of the neurons (then Gemma's post-norm), written out by hand
        a = neurons[layer][real].double()
        mlp = subject.mlp(layer)
        if kind == "gpt2":
            ref = a @ mlp.c_proj.weight.double() + mlp.c_proj.bias.double()  # Conv1D: [in, out]
        elif kind == "neox":
            ref = a @ mlp.dense_4h_to_h.weight.double().T + mlp.dense_4h_to_h.bias.double()
        elif kind == "llama":
            ref = a @ mlp.down_proj.weight.double().T
        else:  # Gemma 3: RMSNorm with gain (1 + w) after the down projection
            y = a @ mlp.down_proj.weight.double().T
            norm = subject.blocks()[layer].post_feedforward_layernorm
            ref = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight.double())
        assert _close(g["mlp_out"], ref) <= 1e-5, layer


# ---- harvested features against recomputed ones -----------------------------------------------------------

HCFG = HarvestConfig(layers=(1,), seq_len=16, top_k=4, random_k=3, quantile_bins=2, per_bin=2, pool=6,
                     batch_size=4, shard_windows=8, token_table=30, min_token_count=2, seed=3)
EPS = 1e-4
"""Pre-activations this close to a decision boundary (the TopK cut, a JumpReLU threshold) may fall either side
between a batched and a single-sequence forward pass; such features are left out of the comparison."""


@pytest.fixture(scope="module")
def bos_subject(tmp_path_factory):
    from helpers import tiny_model_folder

    folder = tiny_model_folder(tmp_path_factory.mktemp("bos_model") / "gpt2-bos", "gpt2", bos=True, seed=4)
    subject = load_model(str(folder))
    assert subject.info.prepend_bos and subject.bos_prefix == [subject.tokenizer.bos_token_id]
    return subject


@pytest.fixture(scope="module")
def harvest_windows(bos_subject):
    rng = np.random.default_rng(11)
    V = len(bos_subject.tokenizer)
    out = []
    for i in range(18):
        n = 16 if i % 4 else int(rng.integers(5, 16))  # some short (padded) windows
        ids = rng.integers(3, 40 if i % 3 else V, size=n)
        out.append(Window(window_id=2 * i + 5, doc_id=i // 3, offset=(i % 3) * 16,
                          token_ids=tuple(int(t) for t in ids)))
    return out


@pytest.fixture(scope="module")
def harvest_saes(bos_subject, tmp_path_factory):
    """(sae, weights, case) for a TopK and a JumpReLU over resid_post and a TopK over mlp_out, all at layer 1."""
    root = tmp_path_factory.mktemp("harvest_saes")
    rng = np.random.default_rng(12)
    d = bos_subject.d_model
    out = []
    for name, hook, arch, k, apply_b_dec in (("topk-res", "blocks.1.hook_resid_post", "topk", 6, True),
                                              ("jump-res", "blocks.1.hook_resid_post", "jumprelu", None, False),
                                              ("topk-mlp", "blocks.1.hook_mlp_out", "topk", 5, False)):
        w = random_weights(rng, d, 48)
        w["threshold"] = rng.uniform(0, 6, 48).astype(np.float32)  # site vectors here are ~5-20 long
        folder = write_saelens(root / name, saelens_cfg(hook, arch, d, 48, k=k, apply_b_dec=apply_b_dec), w,
                               arch == "jumprelu")
        sae = load_sae(str(folder))
        case = Case(name, d, 48, arch, 1, parse_hook_name(hook)[1], "saelens", k=k, subtract_b_dec=apply_b_dec)
        out.append((sae, w, case))
    return out


def _reference_sites(subject, window: Window) -> dict[str, np.ndarray]:
    """Layer 1's resid_post and mlp_out of one window run alone through the plain HF model (BOS prefix first, as
    the harvest runs it; the prefix column dropped)."""
    ids = torch.tensor([subject.bos_prefix + list(window.token_ids)])
    n = len(subject.bos_prefix)
    captured = {}
    handle = subject.mlp(1).register_forward_hook(lambda _m, _a, out: captured.__setitem__("mlp", out))
    try:
        with torch.no_grad():
            hs = subject.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return {"resid_post": hs[2][0, n:].double().numpy(), "mlp_out": captured["mlp"][0, n:].double().numpy()}


def _ambiguous_features(pre: np.ndarray, case: Case, w: dict) -> np.ndarray:
    """``[d_sae]`` True where some token's pre-activation is within EPS of a decision boundary."""
    if case.arch == "jumprelu":
        return (np.abs(pre - w["threshold"]) < EPS).any(0)
    top = -np.sort(-pre, axis=1)
    kth, next_ = top[:, case.k - 1], top[:, case.k]
    close = (kth - next_ < EPS)[:, None] & ((np.abs(pre - kth[:, None]) < EPS) | (np.abs(pre - next_[:, None]) < EPS))
    return close.any(0)


@pytest.fixture(scope="module")
def harvested(bos_subject, harvest_windows, harvest_saes):
    readers = [neuron_reader(1)] + [sae_reader(sae) for sae, _w, _c in harvest_saes]
    state, table = run_harvest(bos_subject, harvest_windows, HCFG, progress=False, readers=readers)
    return {s.source: s for s in summarise(state, table)}


def test_harvested_features_equal_features_recomputed_per_window(bos_subject, harvest_windows, harvest_saes,
                                                                 harvested):
    sites = {w.window_id: _reference_sites(bos_subject, w) for w in harvest_windows}
    wids = np.array([w.window_id for w in harvest_windows])
    n_tokens = sum(len(w.token_ids) for w in harvest_windows)
    for sae, w, case in harvest_saes:
        s = harvested[sae.source]
        assert s.layer == 1 and s.n_tokens == n_tokens and s.top_acts.shape[1] == sae.d_sae
        feats, ambiguous = {}, np.zeros(sae.d_sae, dtype=bool)
        for wid, site in sites.items():
            f, pre = np_encode(site[case.site], w, case.arch, case.k, case.subtract_b_dec, return_pre=True)
            feats[wid] = f
            ambiguous |= _ambiguous_features(pre, case, w)
        checked = np.nonzero(~ambiguous)[0]
        assert len(checked) >= 0.9 * sae.d_sae, case.name
        maxima = np.array([feats[wid].max(0) for wid in wids])  # [W, d_sae]
        allf = np.concatenate([feats[wid] for wid in wids], 0)
        assert (maxima[:, checked] > 0).any(0).sum() >= len(checked) // 2  # mostly live features
        for u in checked:
            # the k largest window maxima, each held by the window named (ties may be broken either way)
            np.testing.assert_allclose(s.top_val[:, u], -np.sort(-maxima[:, u])[: HCFG.top_k], rtol=1e-4, atol=1e-5)
            by_wid = dict(zip(wids, maxima[:, u]))
            assert len(set(s.top_wid[:, u])) == HCFG.top_k
            for rank, wid in enumerate(s.top_wid[:, u]):
                assert by_wid[int(wid)] == pytest.approx(s.top_val[rank, u], rel=1e-4, abs=1e-5)
                ref = feats[int(wid)][:, u]
                got = s.top_acts[rank, u, : len(ref)].astype(np.float64)  # stored as float16
                np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
                assert not s.top_acts[rank, u, len(ref):].any()  # padding stored as 0
        np.testing.assert_allclose(s.mean[checked], allf[:, checked].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.frac_active[checked], (allf[:, checked] > 0).mean(0))
        np.testing.assert_allclose(s.vmax[checked], allf[:, checked].max(0), rtol=1e-4, atol=1e-5)


def test_adding_saes_leaves_the_neurons_unchanged(bos_subject, harvest_windows, harvested):
    state, table = run_harvest(bos_subject, harvest_windows, HCFG, progress=False, readers=[neuron_reader(1)])
    (alone,) = summarise(state, table)
    together = harvested[MLP]
    assert alone.source == together.source == MLP
    fields = {**vars(alone), **{f"token_means.{k}": v for k, v in vars(alone.token_means).items()}}
    for name, value in fields.items():
        head, _, tail = name.partition(".")
        other = getattr(getattr(together, head), tail) if tail else getattr(together, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype, name
            assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), name  # bit for bit
        elif name != "token_means":  # its columns are compared as arrays
            assert value == other, name


def test_embedded_smollm2_site_and_features_equal_plain_forward(embedded_smollm2, tmp_path):
    subject = embedded_smollm2
    assert subject.d_model == 576
    rng = np.random.default_rng(13)
    w = random_weights(rng, 576, 64)
    sae = load_sae(str(write_saelens(tmp_path / "smol-l3", saelens_cfg("blocks.3.hook_resid_post", "standard", 576,
                                                                        64, apply_b_dec=True,
                                                                        model_name="smollm2-135m"), w, False)))
    ids = subject.tokenizer(["The capital of France is Paris, and the capital of Italy is Rome."],
                            return_tensors="pt").input_ids
    with torch.no_grad():
        hs = subject.model(input_ids=ids, output_hidden_states=True).hidden_states
    site = site_activations(subject, ids, None, [(3, "resid_post")])[(3, "resid_post")]
    assert _close(site[0], hs[4][0]) <= 1e-5
    feats = unit_activations(subject, ids, None, [sae_reader(sae)])[(sae.source, 3)][0].double().numpy()
    ref = np_encode(hs[4][0].double().numpy(), w, "relu", subtract_b_dec=True)
    scale = np.abs(hs[4][0].double().numpy()).max()  # SmolLM2's massive activations: float32 error grows with them
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5 * scale)
    assert (ref > 0).any()
