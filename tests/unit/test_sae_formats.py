"""SAEs against independent computations: every published file layout written with the raw libraries and read
back, encoded and decoded by a numpy transcription of the published formulas; names, sites and refusals."""

from __future__ import annotations

import json
import time
import zlib

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from analysis.sae.baselines import baseline_dictionary
from analysis.sae.load import load_sae
from analysis.sae.model import parse_hook_name, topk_relu
from analysis.sae.saelens import save_sae
from analysis.types import UserError
from tests.sae_helpers import (Case, ambiguous, np_decode, np_encode, random_weights, saelens_cfg, saelens_flat_cfg,
                               write_gemma_scope_1, write_gemma_scope_2, write_saelens, write_sparsify)


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
    got3 = sae.encode(torch.from_numpy(x).reshape(4, 10, case.d_in)).double().numpy().reshape(40, -1)  # any shape
    if case.integer:  # whole numbers throughout: exact, ties and all
        np.testing.assert_array_equal(got, ref)
        np.testing.assert_array_equal(got3, got)
    else:  # float32 against float64: where float32's error cannot move a pre-activation across a decision boundary
        sure = ~ambiguous(pre, case, w)
        assert sure.mean() > 0.99, case.name
        np.testing.assert_allclose(got[sure], ref[sure], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got[sure] != 0, ref[sure] != 0)
        np.testing.assert_allclose(got3[sure], got[sure], rtol=1e-5, atol=1e-5)
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
    # an input scale is folded into the weights, as SAELens does on saving (its loader ignores the factor)
    assert cfg["normalize_activations"] == "none" and "norm_scaling_factor" not in cfg
    assert cfg["metadata"]["sae_lens_version"]  # else SAELens takes its legacy path and drops the metadata
    assert cfg.get("k") == case.k
    tensors = load_file(str(saved / "sae_weights.safetensors"))
    expected_names = {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if case.arch == "jumprelu" else set())
    assert set(tensors) == expected_names
    folded = {"W_enc": case.scale, "W_dec": 1 / case.scale, "b_dec": 1 / case.scale}
    for name in expected_names:  # SAELens orientation: W_enc [d_in, d_sae], W_dec [d_sae, d_in]
        np.testing.assert_allclose(tensors[name].numpy(), w[name] * np.float32(folded.get(name, 1.0)), rtol=1e-6)
    back = load_sae(str(saved))
    assert (back.layer, back.site, back.architecture, back.k, back.format) == (case.layer, case.site, case.arch,
                                                                                case.k, "saelens")
    xt = torch.from_numpy(x)
    f = sae.encode(xt)
    if case.scale == 1.0:
        assert torch.equal(back.encode(xt), f) and torch.equal(back.decode(f), sae.decode(f))
    else:  # folded: equal up to float rounding
        torch.testing.assert_close(back.encode(xt), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(back.decode(f), sae.decode(f), rtol=1e-5, atol=1e-5)


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
    # unit columns: normalising 8 float32 numbers, in any summation order, errs by under 8 roundings (5e-7)
    np.testing.assert_allclose(np.linalg.norm(W, axis=0), 1.0, rtol=1e-6)
    np.testing.assert_allclose(rand.encode(x).double().numpy(), x.double().numpy() @ W, rtol=1e-5, atol=1e-5)
    assert torch.equal(baseline_dictionary("random", 8, layer=1, n=20, seed=3).W_enc, rand.W_enc)
    assert not torch.equal(baseline_dictionary("random", 8, layer=1, n=20, seed=4).W_enc, rand.W_enc)
    assert rand.source != basis.source
    with pytest.raises(UserError, match="unknown baseline"):
        baseline_dictionary("pca", 8, layer=1)


# ---- refusals --------------------------------------------------------------------------------------------

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
                                 {k: v for k, v in w.items() if k != "threshold"})), "has no threshold tensor"),
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
