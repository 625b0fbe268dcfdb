"""The one record every format loads into: ``SAE`` (encode, decode, the massive-activation rule), hook names,
and the checks and digest every loader finishes with."""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from analysis.types import UserError

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out", "mlp_input")
TRANSCODER_SITES = ("mlp_input", "mlp_out")
"""A transcoder reads the MLP's input (the residual stream after the pre-MLP norm) and writes the MLP's output."""
MASSIVE = 10.0
"""Site vectors longer than this multiple of their batch's median norm are massive activations (Sun et al. 2024:
attention sinks, e.g. the first token of every window of a model without BOS); dictionaries are neither trained
nor read there."""
ARCHITECTURES = ("relu", "jumprelu", "topk", "linear")
SAE_PREFIX = "sae:"


@dataclass
class SAE:
    """A dictionary of ``d_sae`` features over one site of one layer (tensors on one device, float32)."""

    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    architecture: str
    layer: int
    site: str
    threshold: torch.Tensor | None = None
    k: int | None = None
    apply_b_dec_to_input: bool = False
    input_scale: float = 1.0
    name: str = "sae"
    """Short display name (the folder's name)."""
    format: str = "saelens"
    """The format it was read from: saelens, gemma-scope, gemma-scope-2, sparsify, or 'baseline'."""
    path: str = ""
    model_name: str | None = None
    """The model it says it was trained on, if its config says (not checked: models are renamed freely)."""
    prepend_bos: bool | None = None
    digest: str = ""
    """Hash of the weights and encoder settings: the SAE's identity in the cache."""
    meta: dict = field(default_factory=dict)
    """Anything else worth showing (training numbers, the config's dataset)."""
    output_site: str | None = None
    """A transcoder's output site (``mlp_out``; its input is ``site``, ``mlp_input``); None for an autoencoder,
    whose reconstruction replaces the site it reads."""
    W_skip: torch.Tensor | None = None
    """A skip-transcoder's linear skip term ``[d_out, d_in]`` (SAELens' layout): the output gains ``x @ W_skip.T``."""
    context_size: int | None = None
    """The window length it was trained on, if its config says."""

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.W_dec.shape[1])

    @property
    def is_transcoder(self) -> bool:
        return self.output_site is not None

    @property
    def writes(self) -> str:
        """The site its decoder writes: the output site of a transcoder, the site itself for an autoencoder."""
        return self.output_site or self.site

    @property
    def source(self) -> str:
        """The unit source id of its features: ``sae:<name>@<digest prefix>``."""
        return f"{SAE_PREFIX}{self.name}@{self.digest[:8]}"

    @property
    def salt(self) -> int:
        """A per-source seed offset (random samples of different sources are independent)."""
        return zlib.crc32(self.source.encode()) & 0x7FFFFFFF

    def to(self, device) -> "SAE":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return replace(self, W_enc=move(self.W_enc), b_enc=move(self.b_enc), W_dec=move(self.W_dec),
                       b_dec=move(self.b_dec), threshold=move(self.threshold), W_skip=move(self.W_skip))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.input_scale != 1.0:
            x = x * self.input_scale
        if self.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations ``[..., d_sae]`` of site activations ``[..., d_in]``."""
        return self.activate(self.pre_activations(x))

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        if self.architecture == "linear":
            return pre
        if self.architecture == "relu":
            return torch.relu(pre)
        if self.architecture == "jumprelu":
            return torch.where(pre > self.threshold, torch.relu(pre), torch.zeros((), dtype=pre.dtype, device=pre.device))
        if self.architecture == "topk":
            return topk_relu(pre, self.k)
        raise UserError(f"unknown SAE architecture {self.architecture!r}")

    @property
    def output_scale(self) -> float:
        """What decoded outputs are divided by: an autoencoder's input scale (its reconstruction is in the site's
        units); 1 for a transcoder, whose input alone is scaled (as SAELens runs them)."""
        return 1.0 if self.is_transcoder else self.input_scale

    def direction(self, index) -> torch.Tensor:
        """The decoded direction(s) ``[..., d_out]`` of feature(s) ``index``: what one unit of activation adds."""
        return self.W_dec[index] / self.output_scale

    def decode(self, f: torch.Tensor, x: torch.Tensor | None = None) -> torch.Tensor:
        """The output ``[..., d_out]`` of features ``f``; a skip-transcoder adds its skip term of the input ``x``
        (unscaled: ``x @ W_skip.T``, as SAELens)."""
        out = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        if self.output_scale != 1.0:
            out = out / self.output_scale
        if self.W_skip is not None:
            if x is None:
                raise ValueError("a skip-transcoder's output needs its input (the skip term)")
            out = out + x.to(self.W_skip.dtype) @ self.W_skip.T
        return out

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``decode(encode(x))``: the site's reconstruction (an autoencoder) or the predicted output (a
        transcoder)."""
        return self.decode(self.encode(x), x)

    def describe(self) -> str:
        arch = f"TopK k={self.k}" if self.architecture == "topk" else {"jumprelu": "JumpReLU", "relu": "ReLU"}.get(
            self.architecture, self.architecture)
        if self.is_transcoder:
            skip = " with a skip term" if self.W_skip is not None else ""
            return (f"{self.name}: {arch} transcoder{skip}, {self.d_sae:,} features from {self.site} to "
                    f"{self.output_site} of layer {self.layer} ({self.format})")
        return f"{self.name}: {arch}, {self.d_sae:,} features over {self.site} of layer {self.layer} ({self.format})"


def check_fits(sae: SAE, subject) -> None:
    """UserError unless the subject model has the dictionary's layer and sites at its widths (a dictionary of
    another model, or of another site, is refused here, before anything is run or written)."""
    subject.check_layer(sae.layer)
    what = "transcoder" if sae.is_transcoder else "SAE"
    for site, width, verb in ((sae.site, sae.d_in, "reads"), (sae.output_site, sae.d_out, "writes")):
        if site is None:
            continue
        have = subject.site_width(site)
        if width != have:
            raise UserError(f"{what} {sae.name} {verb} {width}-dimensional vectors, but {site} of {subject.info.name} "
                            f"layer {sae.layer} is {have}-dimensional: not a {what} of this model")


def typical_positions(site_acts: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``real`` (``[B, T]`` bool) without the positions whose site vector (``[B, T, width]``) is longer than
    ``MASSIVE`` times the median norm of the batch's real positions."""
    real = real.to(site_acts.device)
    if not bool(real.any()):
        return real
    norms = site_acts.float().norm(dim=-1)
    return real & (norms <= MASSIVE * norms[real].median())


def topk_relu(pre: torch.Tensor, k: int) -> torch.Tensor:
    """ReLU of the ``k`` largest entries of the last axis, zeros elsewhere; ties at the k-th value go to the lower
    indices (deterministic, unlike ``torch.topk``'s choice among equal values)."""
    k = min(int(k), pre.shape[-1])
    kth = torch.topk(pre, k, dim=-1, sorted=False).values.amin(-1, keepdim=True)
    keep = pre >= kth
    extra = keep.sum(-1, keepdim=True) - k  # entries equal to the k-th value beyond the k allowed
    if bool((extra > 0).any()):  # rare: break the ties towards the lower indices
        tie = pre == kth
        keep = (pre > kth) | (tie & (tie.cumsum(-1) <= tie.sum(-1, keepdim=True) - extra))
    return torch.where(keep, torch.relu(pre), torch.zeros((), dtype=pre.dtype, device=pre.device))


# ---- hook names ----------------------------------------------------------------------------------------------

_HOOK_PATTERNS = [
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_pre$"), "resid_pre"),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_resid_post$"), "resid_post"),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_mlp_out$"), "mlp_out"),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.hook_attn_out$"), "attn_out"),
    # the MLP's normed input (TransformerLens' hook_mlp_in is before the norm: not this site, not supported)
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.(?:ln2\.hook_normalized|mlp\.hook_in)$"), "mlp_input"),
    (re.compile(r"(?:^|\.)blocks\.(\d+)\.mlp\.hook_out$"), "mlp_out"),
    # HF module paths as Gemma Scope 2's config.json names them (hf_hook_point_in / _out)
    (re.compile(r"(?:^|\.)layers\.(\d+)\.output$"), "resid_post"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.pre_feedforward_layernorm\.output$"), "mlp_input"),  # Gemma 2/3
    (re.compile(r"(?:^|\.)layers\.(\d+)\.(?:post_feedforward_layernorm|mlp)\.output$"), "mlp_out"),
    (re.compile(r"(?:^|\.)layers\.(\d+)\.mlp\.input$"), "mlp_input"),
    (re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)$"), "resid_post"),
    (re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.mlp$"), "mlp_out"),
    (re.compile(r"(?:^|\.)(?:layers|h)\.(\d+)\.(?:self_attn|attn|attention)$"), "attn_out"),
]


def parse_hook_name(name: str) -> tuple[int, str]:
    """(layer, site) of a hook name as SAELens/TransformerLens (``blocks.12.hook_resid_post``) or sparsify
    (``layers.12``, ``layers.12.mlp``) write it."""
    for pattern, site in _HOOK_PATTERNS:
        m = pattern.search(name.strip())
        if m:
            return int(m.group(1)), site
    raise UserError(f"hook {name!r} is not a supported site: expected blocks.L.hook_resid_pre|hook_resid_post|"
                    "hook_mlp_out|hook_attn_out|ln2.hook_normalized (SAELens) or layers.L[.mlp|.self_attn] "
                    "(sparsify)")


def hook_name(layer: int, site: str) -> str:
    """The SAELens/TransformerLens name of a site (the MLP's normed input is ``blocks.L.ln2.hook_normalized``)."""
    return f"blocks.{layer}.ln2.hook_normalized" if site == "mlp_input" else f"blocks.{layer}.hook_{site}"


# ---- loading -------------------------------------------------------------------------------------------------

def tensors_of(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".npz":
        with np.load(path) as z:
            return {k: torch.from_numpy(np.array(z[k], dtype=np.float32)) for k in z.files}
    from safetensors.torch import load_file

    return {k: v.float() for k, v in load_file(str(path)).items()}


def _digest(tensors: dict[str, torch.Tensor], settings: dict) -> str:
    h = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().float().contiguous().cpu()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def need(tensors: dict, names: tuple[str, ...], where: Path) -> list[torch.Tensor]:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'nothing'})")
    return [tensors[n] for n in names]


def refuse_extra(tensors: dict, wanted: tuple[str, ...], where: Path, what: str) -> None:
    """A file holding tensors its architecture does not use is refused (it is another architecture, or a
    damaged file): reading it as if they were not there would give other outputs than its makers'."""
    extra = sorted(set(tensors) - set(wanted))
    if extra:
        raise UserError(f"{where} holds {', '.join(extra)}, which a {what} does not use (expected "
                        f"{', '.join(wanted)}): is its cfg.json's architecture right?")


def finish(sae: SAE, settings_extra: dict | None = None) -> SAE:
    """Check shapes and values; compute the digest."""
    d_in, d_sae = sae.W_enc.shape
    d_out = int(sae.W_dec.shape[-1]) if sae.is_transcoder else d_in
    problems = []
    if tuple(sae.W_dec.shape) != (d_sae, d_out):
        problems.append(f"W_dec is {tuple(sae.W_dec.shape)}, expected {(d_sae, d_out)} (W_enc is {(d_in, d_sae)})")
    if tuple(sae.b_enc.shape) != (d_sae,):
        problems.append(f"b_enc is {tuple(sae.b_enc.shape)}, expected {(d_sae,)}")
    if tuple(sae.b_dec.shape) != (d_out,):
        problems.append(f"b_dec is {tuple(sae.b_dec.shape)}, expected {(d_out,)}")
    if sae.W_skip is not None and not sae.is_transcoder:
        problems.append("a skip term (W_skip) belongs to a transcoder, but this dictionary names no output site")
    if sae.W_skip is not None and tuple(sae.W_skip.shape) != (d_out, d_in):
        problems.append(f"W_skip is {tuple(sae.W_skip.shape)}, expected {(d_out, d_in)}")
    if sae.is_transcoder and (sae.site, sae.output_site) != TRANSCODER_SITES:
        problems.append(f"a transcoder from {sae.site} to {sae.output_site} is not supported (supported: the MLP's "
                        f"normed input to its output, {TRANSCODER_SITES[0]} -> {TRANSCODER_SITES[1]})")
    if sae.is_transcoder and sae.apply_b_dec_to_input:
        problems.append("a transcoder's b_dec lies in its output space: it cannot be subtracted from its input")
    if sae.architecture == "jumprelu":
        if sae.threshold is None:
            problems.append("a JumpReLU SAE needs a threshold tensor")
        elif tuple(sae.threshold.shape) != (d_sae,):
            problems.append(f"threshold is {tuple(sae.threshold.shape)}, expected {(d_sae,)}")
    if sae.architecture == "topk" and (sae.k is None or not 0 < int(sae.k) <= d_sae):
        problems.append(f"a TopK SAE needs 0 < k <= d_sae, got k={sae.k}")
    if sae.architecture not in ARCHITECTURES:
        problems.append(f"architecture {sae.architecture!r} is not supported (supported: relu/standard, jumprelu, "
                        "topk)")
    if sae.site not in SITES:
        problems.append(f"site {sae.site!r} is not one of {', '.join(SITES)}")
    if not np.isfinite(sae.input_scale) or sae.input_scale <= 0:
        problems.append(f"input scale {sae.input_scale} is not a positive number")
    if problems:
        raise UserError(f"SAE {sae.path or sae.name}: " + "; ".join(problems))
    tensors = {"W_enc": sae.W_enc, "b_enc": sae.b_enc, "W_dec": sae.W_dec, "b_dec": sae.b_dec}
    if sae.threshold is not None:
        tensors["threshold"] = sae.threshold
    if sae.W_skip is not None:
        tensors["W_skip"] = sae.W_skip
    bad = [n for n, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"SAE {sae.path or sae.name}: {', '.join(bad)} hold NaN or inf values")
    settings = {"architecture": sae.architecture, "k": sae.k, "apply_b_dec_to_input": sae.apply_b_dec_to_input,
                "input_scale": sae.input_scale, "layer": sae.layer, "site": sae.site, **(settings_extra or {})}
    if sae.is_transcoder:  # autoencoders' digests are those of before transcoders existed
        settings["output_site"] = sae.output_site
    sae.digest = _digest(tensors, settings)
    return sae
