"""Load a subject model, and know where its neurons are. The only module that knows HF module paths.

A model name is one of:
- an embedded name (``smollm2-135m``, ``gemma3-270m``; see ``analysis/embedded.py``), never downloaded;
- a local HF folder or a ``.gguf`` file;
- a hub id (``gpt2``, ``EleutherAI/pythia-70m``), used only when the network allows.

The neuron is the input of the MLP output projection: post-activation for plain MLPs, act(gate) * up for
gated ones.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from analysis.embedded import EMBEDDED_MODELS, convert_embedded, file_sha256
from analysis.types import ModelInfo, UserError


@dataclass(frozen=True)
class Architecture:
    """Where the blocks and the hooked projection of one model family live."""

    base_attr: str
    """Attribute of the *ForCausalLM model holding the decoder (runs without the lm_head)."""
    layers_attr: str
    out_proj: str
    """Attribute of the block's ``mlp`` whose input is the neuron vector."""
    gated: bool


_LLAMA_LIKE = Architecture("model", "layers", "down_proj", gated=True)
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture("transformer", "h", "c_proj", gated=False),
    "gpt_neox": Architecture("gpt_neox", "layers", "dense_4h_to_h", gated=False),
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "gemma3_text": _LLAMA_LIKE,
    "olmo": _LLAMA_LIKE,
    "olmo2": _LLAMA_LIKE,
}
REFUSED_REASONS = {
    "mixtral": "its MLPs are mixtures of experts: a token's neurons depend on routing, so there is no single neuron basis per layer",
    "qwen2_moe": "its MLPs are mixtures of experts (no single neuron basis per layer)",
    "qwen3_moe": "its MLPs are mixtures of experts (no single neuron basis per layer)",
    "phi3": "its MLP fuses gate and up into one projection (gate_up_proj): neither its neurons nor a transcoder's "
            "sites are mapped yet",
    "gpt_bigcode": "not mapped yet (MLP path differs)",
    "bert": "it is not a causal language model",
}


@dataclass(frozen=True)
class Encoded:
    """A batch of token-id sequences as the model reads it: BOS prefix (if the model has one), then the tokens,
    right-padded. Padding is masked, so every real token's activations are those of its sequence run alone."""

    input_ids: torch.Tensor
    """``[B, n_prefix + T]`` int64."""
    attention_mask: torch.Tensor
    """``[B, n_prefix + T]`` int64: 1 for the prefix and real tokens, 0 for padding."""
    real: torch.Tensor
    """``[B, T]`` bool: True for real tokens (the prefix columns excluded)."""
    n_prefix: int
    """Columns before the first token: 1 with a BOS prefix, else 0."""


@dataclass
class SubjectModel:
    """A loaded model, its tokenizer, and where its neurons are. The one place that knows the BOS prefix, the
    padding token and the context length."""

    model: torch.nn.Module
    tokenizer: object
    info: ModelInfo
    arch: Architecture

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @functools.cached_property
    def vocab_bytes(self) -> list[bytes]:
        """Every token's bytes (``analysis.tokens.vocab_bytes``), computed once."""
        from analysis.tokens import vocab_bytes

        return vocab_bytes(self.tokenizer)

    @property
    def bos_prefix(self) -> list[int]:
        """``[bos id]`` if the tokenizer puts a BOS token first (``info.prepend_bos``), else ``[]``."""
        return [self.tokenizer.bos_token_id] if self.info.prepend_bos else []

    @property
    def pad_id(self) -> int:
        """The token right-padding is filled with: the pad token, else EOS, else 0 (it is always masked)."""
        for token_id in (self.tokenizer.pad_token_id, self.tokenizer.eos_token_id):
            if token_id is not None:
                return int(token_id)
        return 0

    @property
    def context_length(self) -> int | None:
        """The most positions the model takes (HF ``max_position_embeddings`` or ``n_positions``); None if its
        config says neither."""
        config = self.model.config
        return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text``, without special tokens (no BOS: ``encode`` adds it)."""
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def encode(self, sequences: list[list[int]], length: int | None = None, bos: bool = True) -> Encoded:
        """Token-id sequences as one batch: ``bos_prefix`` first (unless ``bos`` is False), right-padded with
        ``pad_id`` to ``T = length`` tokens (default: the longest sequence)."""
        prefix = self.bos_prefix if bos else []
        T = max((len(s) for s in sequences), default=0) if length is None else length
        B, n = len(sequences), len(prefix)
        ids = torch.full((B, n + T), self.pad_id, dtype=torch.int64)
        ids[:, :n] = torch.tensor(prefix, dtype=torch.int64)
        real = torch.zeros((B, T), dtype=torch.bool)
        for i, s in enumerate(sequences):
            ids[i, n : n + len(s)] = torch.tensor(list(s), dtype=torch.int64)
            real[i, : len(s)] = True
        attention_mask = torch.cat([torch.ones((B, n), dtype=torch.int64), real.long()], 1)
        return Encoded(input_ids=ids, attention_mask=attention_mask, real=real, n_prefix=n)

    def base(self) -> torch.nn.Module:
        """The decoder without the lm_head."""
        return getattr(self.model, self.arch.base_attr)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The language model's logits from the decoder's output (``base()``'s last hidden state, final norm
        applied), as the whole model computes them: the lm_head, then the final soft-cap where the model has one."""
        logits = self.model.get_output_embeddings()(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        return torch.tanh(logits / cap) * cap if cap else logits

    def blocks(self) -> torch.nn.ModuleList:
        return getattr(self.base(), self.arch.layers_attr)

    def mlp(self, layer: int) -> torch.nn.Module:
        return self.blocks()[layer].mlp

    def out_proj(self, layer: int) -> torch.nn.Module:
        return getattr(self.mlp(layer), self.arch.out_proj)

    # ---- weights, as [rows = neurons or vocab, d_model] matrices (for weight-based connections) ----
    def w_in(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``: each neuron's input direction (the gate projection for gated MLPs)."""
        mlp = self.mlp(layer)
        if self.info.architecture == "gpt2":
            return mlp.c_fc.weight.T  # Conv1D stores [in, out]
        if self.info.architecture == "gpt_neox":
            return mlp.dense_h_to_4h.weight
        return mlp.gate_proj.weight

    def w_out(self, layer: int) -> torch.Tensor:
        """``[d_mlp, d_model]``: each neuron's write direction into the residual stream."""
        proj = self.out_proj(layer)
        return proj.weight if self.info.architecture == "gpt2" else proj.weight.T

    def _norm_gain(self, norm: torch.nn.Module) -> torch.Tensor:
        # Gemma's RMSNorm scales by (1 + weight); the others by weight
        w = norm.weight
        return 1.0 + w if "Gemma" in type(norm).__name__ else w

    def mlp_norm_gain(self, layer: int) -> torch.Tensor:
        """``[d_model]`` gain of the norm in front of the layer's MLP."""
        block = self.blocks()[layer]
        for name in ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2"):
            if hasattr(block, name):
                return self._norm_gain(getattr(block, name))
        raise RuntimeError(f"no pre-MLP norm found in {type(block).__name__}")

    def final_norm(self) -> torch.nn.Module:
        """The decoder's norm in front of the unembedding."""
        base = self.base()
        for name in ("norm", "ln_f", "final_layer_norm"):
            if hasattr(base, name):
                return getattr(base, name)
        raise RuntimeError(f"no final norm found in {type(base).__name__}")

    def final_norm_gain(self) -> torch.Tensor:
        return self._norm_gain(self.final_norm())

    # ---- hook sites (analysis/sae.py SITES) ----
    def site_module(self, layer: int, site: str) -> tuple[torch.nn.Module, bool]:
        """(module, is_pre) whose output (or, for ``is_pre``, first input) is ``site`` of ``layer``: the block's
        input (``resid_pre``) or output (``resid_post``); what the MLP / attention adds to the residual stream
        (``mlp_out`` / ``attn_out``: after the post-norm where the block has one, as Gemma 2/3); the MLP's input
        after its norm (``mlp_input``: what a transcoder reads)."""
        self.check_layer(layer)
        block = self.blocks()[layer]
        post_norms = hasattr(block, "pre_feedforward_layernorm")  # Gemma 2/3: sublayer outputs are normed
        if site == "resid_pre":
            return block, True
        if site == "resid_post":
            return block, False
        if site == "mlp_out":
            return (block.post_feedforward_layernorm if post_norms else block.mlp), False
        if site == "mlp_input":
            return block.mlp, True
        if site == "attn_out":
            if post_norms:
                return block.post_attention_layernorm, False
            for name in ("self_attn", "attn", "attention"):
                if hasattr(block, name):
                    return getattr(block, name), False
            raise RuntimeError(f"no attention module found in {type(block).__name__}")
        if site == "mlp_in":  # the neurons
            return self.out_proj(layer), True
        raise UserError(f"unknown hook site {site!r}")

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size if hasattr(self.model.config, "hidden_size") else self.model.config.n_embd)

    def site_width(self, site: str) -> int:
        """Width of a site's vectors: d_mlp for the neurons, d_model for the others."""
        return self.info.d_mlp if site == "mlp_in" else self.d_model

    def check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.info.n_layers:
            raise UserError(f"layer {layer} does not exist: {self.info.name} has layers 0..{self.info.n_layers - 1}")

    def check_neuron(self, neuron: int) -> None:
        if not 0 <= neuron < self.info.d_mlp:
            raise UserError(f"neuron {neuron} does not exist: {self.info.name} has neurons 0..{self.info.d_mlp - 1} per layer")


def _weights_hash(folder: Path) -> str:
    source = folder / "source.json"
    if source.exists():
        return json.loads(source.read_text())["sha256"]
    files = sorted(p for p in folder.iterdir() if p.suffix in {".safetensors", ".bin", ".gguf", ".pt"})
    digest = hashlib.sha256()
    for p in files:
        digest.update(p.name.encode())
        digest.update(file_sha256(p).encode())
    return digest.hexdigest()


def tokenizer_id(tokenizer, name: str) -> str:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()
    return f"{name}@{digest[:12]}"


def tokenizer_prepends_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    if bos is None:
        return False
    ids = tokenizer("a").input_ids
    return len(ids) > 0 and ids[0] == bos


def resolve_source(name: str) -> tuple[str, Path | str, str | None]:
    """(source kind, folder or hub id, gguf file name or None) for a model name."""
    if name in EMBEDDED_MODELS:
        return "embedded", convert_embedded(name), None
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.exists():
            raise UserError(f"GGUF file not found: {path}")
        return "gguf", path.parent, path.name
    if path.is_dir():
        if not (path / "config.json").exists():
            raise UserError(f"{path} is a folder but holds no config.json: not a Hugging Face model folder")
        return "folder", path, None
    if name.startswith((".", "/", "~")) or os.sep in name and name.count("/") > 1:
        raise UserError(f"model folder not found: {name}")
    return "hub", name, None


def load_model(name: str, device: str = "cpu", dtype: torch.dtype = torch.float32) -> SubjectModel:
    """Load a causal LM by name (see module doc) in eval mode, with its tokenizer and neuron map."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA GPU here")
    source, where, gguf = resolve_source(name)
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        config = AutoConfig.from_pretrained(str(where), **kwargs)
    except OSError as exc:
        if source == "hub":
            raise UserError(
                f"unknown model {name!r}: not an embedded name ({', '.join(EMBEDDED_MODELS)}), not a local folder "
                f"or .gguf file, and it could not be fetched from the hub (offline?): {str(exc).splitlines()[0]}"
            ) from None
        raise UserError(f"cannot read the model config of {name!r}: {exc}") from None
    model_type = getattr(config, "model_type", "?")
    if model_type not in ARCHITECTURES:
        reason = REFUSED_REASONS.get(model_type, "its MLP layout is not mapped (see analysis/models.py ARCHITECTURES)")
        supported = ", ".join(sorted(ARCHITECTURES))
        raise UserError(f"architecture {model_type!r} of {name!r} is not supported: {reason}. Supported: {supported}")
    arch = ARCHITECTURES[model_type]
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(where), **kwargs)
        model = AutoModelForCausalLM.from_pretrained(str(where), dtype=dtype, **kwargs)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load {name!r} (tokenizer and weights are needed): {str(exc).splitlines()[0]}") from None
    model.eval().to(device)
    if source == "gguf":
        weights_hash = file_sha256(Path(where) / gguf)
    elif source == "hub":
        weights_hash = _hub_weights_hash(model)
    else:
        weights_hash = _weights_hash(Path(where))
    act_fn = getattr(config, "hidden_act", None) or getattr(config, "activation_function", None) or "?"
    if model_type.startswith("gemma") and getattr(config, "hidden_activation", None):
        act_fn = config.hidden_activation
    blocks = getattr(getattr(model, arch.base_attr), arch.layers_attr)
    proj = getattr(blocks[0].mlp, arch.out_proj)
    d_mlp = proj.weight.shape[0] if model_type == "gpt2" else proj.weight.shape[1]  # GPT-2 Conv1D is [in, out]
    short_name = Path(name).name if source in ("folder", "gguf") else name
    info = ModelInfo(
        name=name,
        model_id=f"{short_name}@{weights_hash[:12]}",
        source=source,
        architecture=model_type,
        n_layers=len(blocks),
        d_mlp=int(d_mlp),
        hook_point=f"{arch.base_attr}.{arch.layers_attr}.{{layer}}.mlp.{arch.out_proj}:input",
        act_fn=str(act_fn),
        gated=arch.gated,
        weights_hash=weights_hash,
        tokenizer_id=tokenizer_id(tokenizer, short_name),
        prepend_bos=tokenizer_prepends_bos(tokenizer),
    )
    return SubjectModel(model=model, tokenizer=tokenizer, info=info, arch=arch)


def _hub_weights_hash(model: torch.nn.Module) -> str:
    """Hash of the parameters themselves (hub snapshots are not a single local file we control)."""
    digest = hashlib.sha256()
    for pname, tensor in sorted(model.state_dict().items()):
        digest.update(pname.encode())
        digest.update(tensor.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()[:1 << 16])
    return digest.hexdigest()


def load_cached_subject(info: ModelInfo, device: str, dtype: str = "float32"):
    """The subject model a cache was harvested from, refusing other weights under the same name."""
    return load_subject(info.name, info.model_id, device, dtype)


def load_subject(name: str, model_id: str, device: str, dtype: str = "float32"):
    """Load model ``name``; a UserError when it no longer has the weights ``model_id`` names."""
    subject = load_model(name, device=device, dtype=getattr(torch, dtype))
    if subject.info.model_id != model_id:
        raise UserError(f"{name} now loads weights {subject.info.model_id}, but the cache was harvested from "
                        f"{model_id}: harvest again, or restore those weights")
    return subject
