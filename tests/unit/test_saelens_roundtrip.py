"""SAE files both ways, checked with SAELens itself (installed for the tests by ``make test``, our pins held):
what we save, SAELens 6.x loads with every field (hook names, model name, prepend_bos, context size, dtype,
architecture, normalisation) and runs as we do; what SAELens saves, we load and run as it does."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from analysis.sae.load import load_sae
from analysis.sae.model import SAE, finish
from analysis.sae.saelens import save_sae

if os.environ.get("CI"):  # make test installs it: in CI its absence is a failure, not a skip
    import sae_lens
else:
    sae_lens = pytest.importorskip("sae_lens", reason="make test installs SAELens (requirements-saelens.txt)")

D_IN, D_SAE = 16, 48


def _random(seed: int, arch: str, *, transcoder=False, skip=False, k=None, scale=1.0, subtract=False) -> SAE:
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * 0.4  # noqa: E731
    sae = SAE(W_enc=r(D_IN, D_SAE), b_enc=r(D_SAE), W_dec=r(D_SAE, D_IN), b_dec=r(D_IN), architecture=arch, k=k,
              threshold=torch.rand(D_SAE, generator=g) * 0.5 if arch == "jumprelu" else None, layer=3,
              site="mlp_input" if transcoder else "resid_post", output_site="mlp_out" if transcoder else None,
              W_skip=r(D_IN, D_IN) if skip else None, apply_b_dec_to_input=subtract, input_scale=scale,
              model_name="smollm2-135m", prepend_bos=False, name=f"mine-{arch}")
    return finish(sae)


OURS = [
    ("topk-sae", dict(arch="topk", k=5, subtract=True), "TopKSAE"),
    ("relu-sae-scaled", dict(arch="relu", scale=0.5, subtract=True), "StandardSAE"),
    ("jumprelu-sae", dict(arch="jumprelu"), "JumpReLUSAE"),
    ("topk-transcoder", dict(arch="topk", k=5, transcoder=True), "TopKSAE"),
    ("relu-transcoder", dict(arch="relu", transcoder=True), "Transcoder"),
    ("jumprelu-skip-transcoder", dict(arch="jumprelu", transcoder=True, skip=True), "JumpReLUSkipTranscoder"),
]


@pytest.mark.parametrize("name,kw,cls", OURS, ids=[o[0] for o in OURS])
def test_what_we_save_saelens_loads_with_every_field_and_runs_as_we_do(tmp_path, name, kw, cls):
    ours = _random(len(name), **{k: v for k, v in kw.items()})
    folder = save_sae(ours, tmp_path / name, dataset="wikipedia-sample", context_size=64)
    theirs = sae_lens.SAE.load_from_disk(str(folder))
    assert type(theirs).__name__ == cls
    md = theirs.cfg.metadata
    site = "ln2.hook_normalized" if ours.is_transcoder else "hook_resid_post"
    assert md.hook_name == f"blocks.3.{site}"
    assert md.model_name == "smollm2-135m" and md.prepend_bos is False and md.context_size == 64
    assert md.dataset_path == "wikipedia-sample"
    assert (md.hook_name_out == "blocks.3.hook_mlp_out") if ours.is_transcoder else md.hook_name_out is None
    assert theirs.cfg.dtype == "float32" and theirs.cfg.normalize_activations == "none"
    assert theirs.cfg.apply_b_dec_to_input is ours.apply_b_dec_to_input
    assert (theirs.cfg.d_in, theirs.cfg.d_sae) == (D_IN, D_SAE)
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(theirs.encode(x), ours.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(theirs(x), ours.reconstruct(x), rtol=1e-5, atol=1e-5)
    back = load_sae(str(folder))  # and our reader gets the same dictionary back
    assert (back.is_transcoder, back.architecture, back.k, back.context_size) == (ours.is_transcoder, ours.architecture,
                                                                                 ours.k, 64)
    torch.testing.assert_close(back.reconstruct(x), ours.reconstruct(x), rtol=1e-5, atol=1e-5)


def _theirs(kind: str):
    from sae_lens.saes.sae import SAEMetadata
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig
    from sae_lens.saes.transcoder import (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig, JumpReLUTranscoder,
                                          JumpReLUTranscoderConfig, SkipTranscoder, SkipTranscoderConfig, Transcoder,
                                          TranscoderConfig)

    md = SAEMetadata(model_name="gpt2", hook_name="blocks.1.hook_resid_pre", prepend_bos=True, context_size=128)
    tmd = SAEMetadata(model_name="gemma-2-2b", hook_name="blocks.1.ln2.hook_normalized",
                      hook_name_out="blocks.1.hook_mlp_out", prepend_bos=True, context_size=1024)
    tc = dict(d_in=D_IN, d_sae=D_SAE, d_out=D_IN, apply_b_dec_to_input=False, metadata=tmd)
    return {
        "standard": (StandardSAE, StandardSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=md)),
        "topk": (TopKSAE, TopKSAEConfig(d_in=D_IN, d_sae=D_SAE, k=6, metadata=md)),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(d_in=D_IN, d_sae=D_SAE, metadata=md)),
        "transcoder": (Transcoder, TranscoderConfig(**tc)),
        "skip_transcoder": (SkipTranscoder, SkipTranscoderConfig(**tc)),
        "jumprelu_transcoder": (JumpReLUTranscoder, JumpReLUTranscoderConfig(**tc)),
        "jumprelu_skip_transcoder": (JumpReLUSkipTranscoder, JumpReLUSkipTranscoderConfig(**tc)),
    }[kind]


@pytest.mark.parametrize("kind", ["standard", "topk", "jumprelu", "transcoder", "skip_transcoder",
                                  "jumprelu_transcoder", "jumprelu_skip_transcoder"])
def test_what_saelens_saves_we_load_and_run_as_it_does(tmp_path, kind):
    cls, cfg = _theirs(kind)
    theirs = cls(cfg)
    g = torch.Generator().manual_seed(len(kind))
    with torch.no_grad():  # SAELens initialises some of these to zero: random values everywhere
        for name, p in theirs.named_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.5 if name == "threshold" else torch.randn(p.shape, generator=g)
                    * 0.4)
    theirs.save_model(str(tmp_path / kind))
    ours = load_sae(str(tmp_path / kind))
    transcoder = "transcoder" in kind
    assert ours.is_transcoder is transcoder
    assert (ours.layer, ours.site, ours.output_site) == ((1, "mlp_input", "mlp_out") if transcoder
                                                         else (1, "resid_pre", None))
    assert ours.model_name == cfg.metadata.model_name and ours.prepend_bos is True
    assert ours.context_size == cfg.metadata.context_size
    assert ours.architecture == {"standard": "relu", "topk": "topk"}.get(kind, "jumprelu" if "jumprelu" in kind
                                                                           else "relu")
    x = torch.randn(50, D_IN, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        f = theirs.encode(x)
        assert bool((f > 0).any()) and bool((f == 0).any())
        torch.testing.assert_close(ours.encode(x), f, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours.reconstruct(x), theirs(x), rtol=1e-5, atol=1e-5)
    assert np.isfinite(ours.W_enc.numpy()).all()
