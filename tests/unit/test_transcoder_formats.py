"""Transcoders as people publish them, each written in its documented form with the raw libraries (no hub here), read
back and run against a numpy transcription of the published formula:

    f = act(x @ W_enc + b_enc)          x: the MLP's normed input; act: ReLU, JumpReLU (pre > threshold) or TopK
    y = f @ W_dec + b_dec [+ x @ W_skip.T]      y: the MLP's output (a skip-transcoder adds its linear term)

and the refusals: missing or extra tensors, no threshold, no output hook, another model's widths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from analysis.sae.load import load_sae
from analysis.sae.model import check_fits
from analysis.types import UserError
from tests.sae_helpers import np_encode

D_IN, D_SAE, LAYER = 12, 40, 2


def _weights(seed: int, skip: bool = False, d_out: int = D_IN) -> dict:
    rng = np.random.default_rng(seed)
    w = {"W_enc": rng.normal(0, 0.5, (D_IN, D_SAE)), "b_enc": rng.normal(0, 0.3, D_SAE),
         "W_dec": rng.normal(0, 0.5, (D_SAE, d_out)), "b_dec": rng.normal(0, 0.3, d_out),
         "threshold": rng.uniform(0.0, 0.8, D_SAE)}
    if skip:
        w["W_skip"] = rng.normal(0, 0.3, (d_out, D_IN))  # SAELens / sparsify orientation [d_out, d_in]
    return {k: v.astype(np.float32) for k, v in w.items()}


def _np_out(x, w, arch, k=None):
    f = np_encode(x, w, arch, k)
    y = f @ w["W_dec"].astype(np.float64) + w["b_dec"]
    if "W_skip" in w:
        y = y + np.asarray(x, np.float64) @ w["W_skip"].astype(np.float64).T
    return f, y


def _saelens(folder, arch, w, k=None, hook_out=f"blocks.{LAYER}.hook_mlp_out", drop=(), extra=None):
    """A SAELens 6.x transcoder folder as ``Transcoder.save_model`` writes it (cfg keys as it writes them)."""
    folder.mkdir(parents=True)
    names = ["W_enc", "b_enc", "W_dec", "b_dec"] + (["threshold"] if "jumprelu" in arch else []) + (
        ["W_skip"] if "skip" in arch else [])
    tensors = {n: w[n] for n in names if n not in drop}
    tensors.update(extra or {})
    save_file(tensors, str(folder / "sae_weights.safetensors"))
    meta = {"sae_lens_version": "6.54.12", "sae_lens_training_version": "6.54.12", "model_name": "gemma-2-2b",
            "hook_name": f"blocks.{LAYER}.ln2.hook_normalized", "prepend_bos": True, "context_size": 1024}
    if hook_out:
        meta["hook_name_out"] = hook_out
    cfg = {"d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "reshape_activations": "none", "metadata": meta, "architecture": arch}
    if arch == "topk":
        cfg["k"] = k
    else:
        cfg["d_out"] = int(w["W_dec"].shape[1])
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def _gemma_scope_2(root, w, affine=False, config=True, drop=()):
    """Gemma Scope 2: ``transcoder[_affine]/layer_L_width_16k_l0_small/params.safetensors`` (lower-case names, an
    affine one with ``affine_skip_connection [d_in, d_out]``) and the ``config.json`` naming the HF hook points."""
    folder = root / ("transcoder_all_affine" if affine else "transcoder_all") / f"layer_{LAYER}_width_16k_l0_small"
    folder.mkdir(parents=True)
    tensors = {"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"],
               "threshold": w["threshold"]}
    if affine:
        tensors["affine_skip_connection"] = np.ascontiguousarray(w["W_skip"].T)
    save_file({k: v for k, v in tensors.items() if k not in drop}, str(folder / "params.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps({
            "architecture": "jump_relu", "model_name": "gemma-v3-270m-pt", "affine_connection": affine,
            "hf_hook_point_in": f"model.layers.{LAYER}.pre_feedforward_layernorm.output",
            "hf_hook_point_out": f"model.layers.{LAYER}.post_feedforward_layernorm.output"}))
    return folder / "params.safetensors"


def _gemma_scope_1(root, w):
    """Gemma Scope 1's transcoders: ``gemma-scope-2b-pt-transcoders/layer_L/width_16k/average_l0_N/params.npz``."""
    folder = root / "gemma-scope-2b-pt-transcoders" / f"layer_{LAYER}" / "width_16k" / "average_l0_9"
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", W_enc=w["W_enc"], W_dec=w["W_dec"], b_enc=w["b_enc"], b_dec=w["b_dec"],
             threshold=w["threshold"])
    return folder


def _sparsify(root, w, k, skip=True):
    """EleutherAI sparsify's (skip-)transcoders: ``layers.L.mlp/`` with ``cfg.json`` (``transcode: true``) and
    ``sae.safetensors`` (``encoder.weight [d_sae, d_in]``, ``W_dec``, ``b_dec``, ``W_skip [d_out, d_in]``)."""
    folder = root / f"layers.{LAYER}.mlp"
    folder.mkdir(parents=True)
    tensors = {"encoder.weight": np.ascontiguousarray(w["W_enc"].T), "encoder.bias": w["b_enc"],
               "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    if skip:
        tensors["W_skip"] = w["W_skip"]
    save_file(tensors, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"num_latents": D_SAE, "k": k, "transcode": True,
                                                 "skip_connection": skip}))
    return folder


FORMATS = [
    ("saelens-transcoder", "relu", None, False, lambda p, w: _saelens(p / "tc", "transcoder", w), "saelens"),
    ("saelens-skip", "relu", None, True, lambda p, w: _saelens(p / "tc", "skip_transcoder", w), "saelens"),
    ("saelens-jumprelu", "jumprelu", None, False, lambda p, w: _saelens(p / "tc", "jumprelu_transcoder", w),
     "saelens"),
    ("saelens-jumprelu-skip", "jumprelu", None, True,
     lambda p, w: _saelens(p / "tc", "jumprelu_skip_transcoder", w), "saelens"),
    ("saelens-topk-hook-out", "topk", 6, False, lambda p, w: _saelens(p / "tc", "topk", w, k=6), "saelens"),
    ("gemma-scope-2", "jumprelu", None, False, lambda p, w: _gemma_scope_2(p, w), "gemma-scope-2"),
    ("gemma-scope-2-affine", "jumprelu", None, True, lambda p, w: _gemma_scope_2(p, w, affine=True),
     "gemma-scope-2"),
    ("gemma-scope-2-no-config", "jumprelu", None, False, lambda p, w: _gemma_scope_2(p, w, config=False),
     "gemma-scope-2"),
    ("gemma-scope-1", "jumprelu", None, False, lambda p, w: _gemma_scope_1(p, w), "gemma-scope"),
    ("sparsify-skip", "topk", 5, True, lambda p, w: _sparsify(p, w, 5), "sparsify"),
    ("sparsify-plain", "topk", 5, False, lambda p, w: _sparsify(p, w, 5, skip=False), "sparsify"),
]


@pytest.mark.parametrize("name,arch,k,skip,write,fmt", FORMATS, ids=[f[0] for f in FORMATS])
def test_a_published_transcoder_reads_the_mlp_input_and_writes_its_output(tmp_path, name, arch, k, skip, write, fmt):
    w = _weights(len(name), skip)
    tc = load_sae(str(write(tmp_path, w)))
    assert tc.is_transcoder and (tc.layer, tc.site, tc.output_site) == (LAYER, "mlp_input", "mlp_out")
    assert (tc.architecture, tc.k, tc.format, tc.d_in, tc.d_sae, tc.d_out) == (arch, k, fmt, D_IN, D_SAE, D_IN)
    assert (tc.W_skip is not None) == skip
    x = np.random.default_rng(7).normal(0, 1.0, (30, D_IN)).astype(np.float32)
    f_ref, y_ref = _np_out(x, w, arch, k)
    f = tc.encode(torch.from_numpy(x))
    np.testing.assert_allclose(f.double().numpy(), f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(tc.reconstruct(torch.from_numpy(x)).double().numpy(), y_ref, rtol=1e-4, atol=1e-4)
    assert (f_ref > 0).any() and (f_ref == 0).any()  # some features fire, some do not
    assert tc.source.startswith("sae:") and "transcoder" in tc.describe()


def test_refusals_of_broken_transcoders_name_the_problem(tmp_path):
    w = _weights(3, skip=True)
    cases = [
        (_saelens(tmp_path / "a", "skip_transcoder", w, drop=("W_skip",)), "lacks W_skip"),
        (_saelens(tmp_path / "b", "transcoder", w, extra={"W_skip": w["W_skip"]}), "holds W_skip, which a transcoder"),
        (_saelens(tmp_path / "c", "jumprelu_transcoder", w, drop=("threshold",)), "lacks threshold"),
        (_saelens(tmp_path / "d", "transcoder", w, hook_out=None), "needs metadata.hook_name_out"),
        (_saelens(tmp_path / "e", "transcoder", w, hook_out="blocks.5.hook_mlp_out"), "writes layer 5"),
        (_saelens(tmp_path / "f", "transcoder", w, hook_out="blocks.2.hook_resid_post"), "is not supported"),
        (_gemma_scope_2(tmp_path / "g", w, drop=("threshold",)), "has no threshold tensor"),
        (_gemma_scope_2(tmp_path / "h", w, affine=False, drop=()).parent, None),  # fine: the control
    ]
    bad_affine = _gemma_scope_2(tmp_path / "i", w, affine=True)
    cfg = json.loads((bad_affine.parent / "config.json").read_text())
    from safetensors.numpy import load_file
    t = load_file(str(bad_affine))
    del t["affine_skip_connection"]
    save_file(t, str(bad_affine))
    cases.append((bad_affine, "no affine_skip_connection") if cfg["affine_connection"] else (bad_affine, None))
    for path, message in cases:
        if message is None:
            assert load_sae(str(path)).is_transcoder
            continue
        with pytest.raises(UserError, match=message):
            load_sae(str(path))


def test_a_transcoder_of_another_width_is_refused_before_anything_runs(tmp_path, tiny_folders):
    from analysis.models import load_model

    subject = load_model(str(tiny_folders["llama"]))
    d = subject.d_model
    w = _weights(5)
    ok = load_sae(str(_saelens(tmp_path / "wrong-in", "transcoder", w)))
    with pytest.raises(UserError, match=f"reads {D_IN}-dimensional.*mlp_input.*{d}-dimensional"):
        check_fits(ok, subject)
    rng = np.random.default_rng(0)
    fits_in = {"W_enc": rng.normal(size=(d, D_SAE)), "b_enc": np.zeros(D_SAE), "W_dec": rng.normal(size=(D_SAE, 3)),
               "b_dec": np.zeros(3)}
    folder = tmp_path / "wrong-out"
    folder.mkdir()
    save_file({k: v.astype(np.float32) for k, v in fits_in.items()}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({
        "architecture": "transcoder", "d_in": d, "d_sae": D_SAE, "d_out": 3, "apply_b_dec_to_input": False,
        "metadata": {"sae_lens_version": "6.54.12", "hook_name": "blocks.1.ln2.hook_normalized",
                     "hook_name_out": "blocks.1.hook_mlp_out"}}))
    with pytest.raises(UserError, match=f"writes 3-dimensional.*mlp_out.*{d}-dimensional"):
        check_fits(load_sae(str(folder)), subject)


def test_gemma_scope_2_saes_whose_config_names_their_one_site_twice_stay_saes(tmp_path):
    """Gemma Scope 2's SAE configs carry ``hf_hook_point_out`` equal to ``hf_hook_point_in``: not transcoders."""
    rng = np.random.default_rng(4)
    for folder, hook, site in (("resid_post_all", f"model.layers.{LAYER}.output", "resid_post"),
                               ("attn_out_all", f"model.layers.{LAYER}.self_attn.o_proj.input", "attn_out"),
                               ("mlp_out_all", f"model.layers.{LAYER}.post_feedforward_layernorm.output", "mlp_out")):
        where = tmp_path / folder / f"layer_{LAYER}_width_16k_l0_small"
        where.mkdir(parents=True)
        w = {"w_enc": rng.normal(size=(D_IN, D_SAE)), "w_dec": rng.normal(size=(D_SAE, D_IN)),
             "b_enc": rng.normal(size=D_SAE), "b_dec": rng.normal(size=D_IN), "threshold": rng.uniform(size=D_SAE)}
        save_file({k: v.astype(np.float32) for k, v in w.items()}, str(where / "params.safetensors"))
        (where / "config.json").write_text(json.dumps({"architecture": "jump_relu", "model_name": "gemma-v3-1b-pt",
                                                       "hf_hook_point_in": hook, "hf_hook_point_out": hook}))
        sae = load_sae(str(where / "params.safetensors"))
        assert not sae.is_transcoder and (sae.layer, sae.site) == (LAYER, site), folder


def test_saelens_hook_mlp_in_is_read_by_its_hf_hook_point_or_refused(tmp_path):
    """SAELens names Gemma Scope 2 transcoders' input ``blocks.L.hook_mlp_in`` (in TransformerLens: before the
    norm) and keeps the exact HF point beside it: read by that; without it the name is refused, not guessed."""
    w = _weights(9)
    folder = _saelens(tmp_path / "gs2", "jumprelu_transcoder", w)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg["metadata"].update(hook_name=f"blocks.{LAYER}.hook_mlp_in",
                           hf_hook_name=f"model.layers.{LAYER}.pre_feedforward_layernorm.output",
                           hf_hook_name_out=f"model.layers.{LAYER}.post_feedforward_layernorm.output")
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tc = load_sae(str(folder))
    assert tc.is_transcoder and (tc.site, tc.output_site) == ("mlp_input", "mlp_out")
    del cfg["metadata"]["hf_hook_name"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="hook_mlp_in' is not a supported site"):
        load_sae(str(folder))


def test_a_scaled_skip_transcoder_scales_its_input_only_as_saelens_runs_it(tmp_path):
    """``expected_average_only_in`` with a factor s: f = act(s x W_enc + b_enc), y = f W_dec + b_dec + x W_skip^T
    (SAELens' Transcoder leaves the output unscaled); saving folds s into W_enc alone."""
    from analysis.sae.saelens import save_sae

    w = _weights(11, skip=True)
    folder = _saelens(tmp_path / "scaled", "skip_transcoder", w)
    cfg = json.loads((folder / "cfg.json").read_text())
    cfg.update(normalize_activations="expected_average_only_in", norm_scaling_factor=0.5)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    tc = load_sae(str(folder))
    x = np.random.default_rng(3).normal(0, 1.0, (30, D_IN)).astype(np.float32)
    f = np_encode(x * 0.5, w, "relu")
    y = f @ w["W_dec"].astype(np.float64) + w["b_dec"] + x.astype(np.float64) @ w["W_skip"].astype(np.float64).T
    np.testing.assert_allclose(tc.reconstruct(torch.from_numpy(x)).double().numpy(), y, rtol=1e-4, atol=1e-4)
    back = load_sae(str(save_sae(tc, tmp_path / "saved")))
    assert back.input_scale == 1.0
    np.testing.assert_allclose(back.reconstruct(torch.from_numpy(x)).double().numpy(), y, rtol=1e-4, atol=1e-4)
