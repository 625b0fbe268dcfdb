"""Sparse autoencoders (dictionaries of features over one hook site): load the formats people publish, encode,
decode, save in the SAELens layout.

One record, ``SAE``, whatever the file format:

    x' = x * input_scale − (b_dec if apply_b_dec_to_input)
    pre = x' @ W_enc + b_enc                       W_enc [d_in, d_sae]
    f = relu(pre)                                  'relu'     (SAELens "standard")
        relu(pre) * (pre > threshold)              'jumprelu' (SAELens, Gemma Scope)
        relu(pre) on the k largest pre, else 0     'topk'     (Gao et al. 2024; ties at the k-th value go to the
                                                               lower feature index)
        pre                                        'linear'   (our baseline directions: a basis or random)
    x_hat = (f @ W_dec + b_dec) / input_scale      W_dec [d_sae, d_in]

Formats read (``load_sae``):
- SAELens folder: ``cfg.json`` + ``sae_weights.safetensors``; the current config (``architecture``, ``k``,
  ``metadata.hook_name``, ``metadata.model_name``, ``metadata.prepend_bos``) and the older flat one
  (``hook_point``/``hook_name``, ``activation_fn_str``, ``activation_fn_kwargs.k``).
  ``normalize_activations``: ``none``; ``expected_average_only_in`` multiplies inputs by the config's
  ``norm_scaling_factor`` when it has one, else by 1 — which is what SAELens does at run time (it folds the
  factor into the weights when it saves a trained SAE).
- Gemma Scope 1: ``params.npz`` (``W_enc, W_dec, b_enc, b_dec, threshold``), JumpReLU, no b_dec subtraction;
  Gemma Scope 2: ``params.safetensors`` with lower-case names. Site and layer come from the folder path
  (``…-res/layer_12/…``, ``resid_post/layer_12_…``) or a ``config.json`` beside them, or are given.
- EleutherAI sparsify: ``cfg.json`` (``num_latents`` or ``expansion_factor``, ``k``) + ``sae.safetensors``
  (``encoder.weight [n, d_in]``, ``encoder.bias``, ``W_dec``, ``b_dec``); inputs minus ``b_dec``, ReLU, TopK;
  the folder name (``layers.12``, ``layers.12.mlp``) is the hook.

Hook sites (``SITES``): ``resid_pre`` (the block's input), ``resid_post`` (its output), ``mlp_out`` and
``attn_out`` (what the MLP / attention sublayer adds to the residual stream; after the post-norm in Gemma 2/3).
"""

from __future__ import annotations

import hashlib
import json
import re
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from analysis.config import relocated
from analysis.types import DictionaryInfo, UserError

SITES = ("resid_pre", "resid_post", "mlp_out", "attn_out")
MASSIVE = 10.0
"""Site vectors longer than this multiple of their batch's median norm are massive activations (Sun et al. 2024:
attention sinks, e.g. the first token of every window of a model without BOS); dictionaries are neither trained
nor read there."""
ARCHITECTURES = ("relu", "jumprelu", "topk", "linear")
SAE_PREFIX = "sae:"
_SAELENS_WEIGHTS = "sae_weights.safetensors"


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

    @property
    def d_in(self) -> int:
        return int(self.W_enc.shape[0])

    @property
    def d_sae(self) -> int:
        return int(self.W_enc.shape[1])

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
                       b_dec=move(self.b_dec), threshold=move(self.threshold))

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

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        out = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return out / self.input_scale if self.input_scale != 1.0 else out

    def describe(self) -> str:
        arch = f"TopK k={self.k}" if self.architecture == "topk" else {"jumprelu": "JumpReLU", "relu": "ReLU"}.get(
            self.architecture, self.architecture)
        return f"{self.name}: {arch}, {self.d_sae:,} features over {self.site} of layer {self.layer} ({self.format})"


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
                    "hook_mlp_out|hook_attn_out (SAELens) or layers.L[.mlp|.self_attn] (sparsify)")


def hook_name(layer: int, site: str) -> str:
    """The SAELens/TransformerLens name of a site."""
    return f"blocks.{layer}.hook_{site}"


_SITE_FOLDER = re.compile(r"(resid_pre|resid_post|mlp_out|attn_out)(?:_\w+)?")  # Gemma Scope 2: resid_post[_all]
_SCOPE_REPO = re.compile(r"gemma-scope-.+?-(res|mlp|att)(?:-[a-z0-9]+)*$")  # Gemma Scope 1: gemma-scope-2b-pt-res
_SCOPE_SITES = {"res": "resid_post", "mlp": "mlp_out", "att": "attn_out"}


def _site_from_path(path: Path) -> tuple[int | None, str | None]:
    """Layer and site from the folders above a Gemma Scope file, nearest first, each folder name read whole:
    ``gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_71/`` (also as the hub cache names the repo:
    ``models--google--gemma-scope-2b-pt-res/snapshots/<hash>/layer_12/…``), ``resid_post/layer_12_width_16k…/``.
    Words inside unrelated folder names (``features_``, ``scores_``) say nothing."""
    layer = site = None
    for part in reversed([p.lower() for p in path.parts[:-1]]):
        if layer is None and (m := re.fullmatch(r"layer_(\d+)(?:_\w+)?", part)):
            layer = int(m.group(1))
        if site is None:
            if m := _SITE_FOLDER.fullmatch(part):
                site = m.group(1)
            elif m := _SCOPE_REPO.search(part):
                site = _SCOPE_SITES[m.group(1)]
        if layer is not None and site is not None:
            break
    return layer, site


# ---- loading -------------------------------------------------------------------------------------------------

def _tensors_of(path: Path) -> dict[str, torch.Tensor]:
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


def _need(tensors: dict, names: tuple[str, ...], where: Path) -> list[torch.Tensor]:
    missing = [n for n in names if n not in tensors]
    if missing:
        raise UserError(f"{where} lacks {', '.join(missing)} (has {', '.join(sorted(tensors)) or 'nothing'})")
    return [tensors[n] for n in names]


def _finish(sae: SAE, settings_extra: dict | None = None) -> SAE:
    """Check shapes and values; compute the digest."""
    d_in, d_sae = sae.W_enc.shape
    problems = []
    if tuple(sae.W_dec.shape) != (d_sae, d_in):
        problems.append(f"W_dec is {tuple(sae.W_dec.shape)}, expected {(d_sae, d_in)} (W_enc is {(d_in, d_sae)})")
    if tuple(sae.b_enc.shape) != (d_sae,):
        problems.append(f"b_enc is {tuple(sae.b_enc.shape)}, expected {(d_sae,)}")
    if tuple(sae.b_dec.shape) != (d_in,):
        problems.append(f"b_dec is {tuple(sae.b_dec.shape)}, expected {(d_in,)}")
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
    bad = [n for n, t in tensors.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise UserError(f"SAE {sae.path or sae.name}: {', '.join(bad)} hold NaN or inf values")
    settings = {"architecture": sae.architecture, "k": sae.k, "apply_b_dec_to_input": sae.apply_b_dec_to_input,
                "input_scale": sae.input_scale, "layer": sae.layer, "site": sae.site, **(settings_extra or {})}
    sae.digest = _digest(tensors, settings)
    return sae


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


def _load_saelens(folder: Path) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    meta = cfg.get("metadata") or {}
    hook = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    if not hook:
        raise UserError(f"{folder / 'cfg.json'} names no hook (metadata.hook_name, hook_name or hook_point)")
    layer, site = parse_hook_name(hook)
    architecture, k = _architecture_of_saelens(cfg, folder / "cfg.json")
    t = _tensors_of(folder / _SAELENS_WEIGHTS)
    W_enc, b_enc, W_dec, b_dec = _need(t, ("W_enc", "b_enc", "W_dec", "b_dec"), folder / _SAELENS_WEIGHTS)
    threshold = _need(t, ("threshold",), folder / _SAELENS_WEIGHTS)[0] if architecture == "jumprelu" else None
    prepend = meta.get("prepend_bos", cfg.get("prepend_bos"))
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture=architecture,
               k=k, layer=layer, site=site, apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", False)),
               input_scale=_input_scale(cfg, folder / "cfg.json"), format="saelens",
               model_name=meta.get("model_name") or cfg.get("model_name"),
               prepend_bos=None if prepend is None else bool(prepend),
               meta={k_: v for k_, v in (cfg.get("training") or {}).items()})


def _load_gemma_scope(folder: Path, file: Path, layer: int | None, site: str | None) -> SAE:
    t = _tensors_of(file)
    lower = {k.lower(): v for k, v in t.items()}
    W_enc, W_dec, b_enc, b_dec, threshold = _need(lower, ("w_enc", "w_dec", "b_enc", "b_dec", "threshold"), file)
    path_layer, path_site = _site_from_path(file)
    cfg = {}
    if (folder / "config.json").exists():
        cfg = json.loads((folder / "config.json").read_text())
        hook = cfg.get("hf_hook_point_in") or cfg.get("hook_name")
        if hook:
            try:
                path_layer, path_site = parse_hook_name(str(hook))
            except UserError:
                pass
    layer = path_layer if layer is None else layer
    site = path_site if site is None else site
    if layer is None or site is None:
        raise UserError(f"{file}: cannot tell its layer and site from the path; give them: --sae {folder}#layer=L,"
                        f"site={'|'.join(SITES)}")
    return SAE(W_enc=W_enc, b_enc=b_enc, W_dec=W_dec, b_dec=b_dec, threshold=threshold, architecture="jumprelu",
               layer=layer, site=site, apply_b_dec_to_input=False,
               format="gemma-scope" if file.suffix == ".npz" else "gemma-scope-2",
               model_name=cfg.get("model_name"))


def _load_sparsify(folder: Path, layer: int | None, site: str | None) -> SAE:
    cfg = json.loads((folder / "cfg.json").read_text())
    t = _tensors_of(folder / "sae.safetensors")
    enc_w, enc_b, W_dec, b_dec = _need(t, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), folder / "sae.safetensors")
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


def parse_sae_spec(spec: str) -> tuple[str, int | None, str | None]:
    """``DIR_OR_ID[#layer=L,site=S]`` -> (where, layer, site)."""
    where, _, extra = spec.partition("#")
    layer = site = None
    for part in filter(None, (p.strip() for p in extra.split(","))):
        key, _, value = part.partition("=")
        if key == "layer" and value.isdigit():
            layer = int(value)
        elif key == "site" and value in SITES:
            site = value
        else:
            raise UserError(f"bad SAE option {part!r} in {spec!r}: use #layer=L,site={'|'.join(SITES)}")
    return where, layer, site


def load_sae(spec: str, layer: int | None = None, site: str | None = None) -> SAE:
    """Load an SAE from a folder (any format above), or a hub id ``org/repo[/subfolder]`` when the network allows.
    ``spec`` may end in ``#layer=L,site=S`` for folders whose path does not say."""
    where, spec_layer, spec_site = parse_sae_spec(spec)
    layer = spec_layer if layer is None else layer
    site = spec_site if site is None else site
    folder = Path(where).expanduser()
    if not folder.exists():
        folder = _from_hub(where)
    if folder.is_file():
        folder, file = folder.parent, folder
    else:
        file = None
    if file is None and (folder / "cfg.json").exists() and (folder / _SAELENS_WEIGHTS).exists():
        sae = _load_saelens(folder)
        if layer is not None or site is not None:
            sae = replace(sae, layer=sae.layer if layer is None else layer, site=sae.site if site is None else site)
    elif file is None and (folder / "cfg.json").exists() and (folder / "sae.safetensors").exists():
        sae = _load_sparsify(folder, layer, site)
    elif file is not None and file.name in ("params.npz", "params.safetensors"):
        sae = _load_gemma_scope(folder, file, layer, site)
    elif (folder / "params.npz").exists() or (folder / "params.safetensors").exists():
        file = folder / ("params.npz" if (folder / "params.npz").exists() else "params.safetensors")
        sae = _load_gemma_scope(folder, file, layer, site)
    else:
        raise UserError(f"{folder} holds no SAE this viewer reads: expected cfg.json + sae_weights.safetensors "
                        "(SAELens), params.npz / params.safetensors (Gemma Scope 1/2) or cfg.json + sae.safetensors "
                        "(EleutherAI sparsify)")
    sae.path = str(folder.resolve())
    sae.name = sae.name if sae.name != "sae" else _display_name(folder)
    return _finish(sae)


def _display_name(folder: Path) -> str:
    name = folder.name
    if re.fullmatch(r"(layers|h)\.\d+.*|average_l0_\d+|width_\w+", name) and folder.parent.name:
        name = f"{folder.parent.name}-{name}"
    return re.sub(r"[^\w.\-]+", "-", name).strip("-") or "sae"


def _from_hub(repo_path: str) -> Path:
    parts = repo_path.strip("/").split("/")
    if len(parts) < 2 or repo_path.startswith((".", "/", "~")):
        raise UserError(f"SAE folder not found: {repo_path}")
    repo, sub = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        from huggingface_hub import snapshot_download

        root = snapshot_download(repo, allow_patterns=[f"{sub}/*"] if sub else None)
    except Exception as exc:  # offline, unknown repo, gated repo: all the user's to fix
        raise UserError(f"SAE {repo_path!r} is not a local folder and could not be fetched from the hub "
                        f"(offline?): {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return Path(root) / sub if sub else Path(root)


# ---- saving --------------------------------------------------------------------------------------------------

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
    tmp = folder / (_SAELENS_WEIGHTS + ".tmp")
    save_file({k: v.detach().float().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
    tmp.replace(folder / _SAELENS_WEIGHTS)
    (folder / "cfg.json").write_text(json.dumps(cfg, indent=2))
    return folder


# ---- baseline dictionaries (for comparing kinds of units) ----------------------------------------------------

BASIS = "basis"
RANDOM = "random"


def baseline_dictionary(kind: str, d_in: int, layer: int, site: str = "resid_post", n: int | None = None,
                        seed: int = 0) -> SAE:
    """The residual stream's own basis (``basis``: unit i reads dimension i) or ``n`` seeded random unit
    directions (``random``), as linear dictionaries over a site: the baselines units are compared against."""
    if kind == BASIS:
        W = torch.eye(d_in)
    elif kind == RANDOM:
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d_in, n or d_in, generator=g)
        W = W / W.norm(dim=0, keepdim=True)
    else:
        raise UserError(f"unknown baseline {kind!r} (basis, random)")
    sae = SAE(W_enc=W, b_enc=torch.zeros(W.shape[1]), W_dec=W.T.contiguous(), b_dec=torch.zeros(d_in),
              architecture="linear", layer=layer, site=site, format="baseline",
              name=f"{site}-{kind}" + (f"-seed{seed}" if kind == RANDOM else ""),
              meta={"baseline": kind, "seed": seed} if kind == RANDOM else {"baseline": kind})
    return _finish(sae)


def dictionary_info(sae: SAE, model_id: str) -> DictionaryInfo:
    """What the cache stores about a dictionary (its weights stay in their folder)."""
    return DictionaryInfo(source=sae.source, model_id=model_id, name=sae.name, format=sae.format,
                          architecture=sae.architecture, layer=sae.layer, site=sae.site, d_in=sae.d_in,
                          d_sae=sae.d_sae, k=sae.k, path=sae.path, meta=sae.meta)


def load_dictionary(info: DictionaryInfo) -> SAE:
    """The dictionary a cache row describes: rebuilt (a baseline) or loaded from its folder, refusing weights that
    changed since the harvest."""
    if info.format == "baseline":
        sae = baseline_dictionary(info.meta["baseline"], info.d_in, info.layer, info.site, info.d_sae,
                                  info.meta.get("seed", 0))
    else:
        folder = relocated(info.path)
        if not folder.exists():
            raise UserError(f"the weights of {info.source} are gone from {info.path}: restore the folder, or harvest "
                            "the SAE again from where it is now")
        sae = load_sae(f"{folder}#layer={info.layer},site={info.site}")
        sae.name = info.name
    if sae.source != info.source:
        raise UserError(f"{info.path} now holds other weights than {info.source} (harvested from it): harvest again")
    sae.meta = {**sae.meta, **info.meta}
    return sae
