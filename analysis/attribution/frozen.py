"""The frozen model (attention patterns and norm denominators constant for gradients, values unchanged) and
every unit's attribution to a target through it."""

from __future__ import annotations

import sys
import threading
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Iterator

import torch

from analysis.activations import edited_site
from analysis.models import SubjectModel
from analysis.types import MLP, UserError
from analysis.attribution.units import Key, Target

if TYPE_CHECKING:
    from analysis.sae.model import SAE

# ---- the frozen model ----------------------------------------------------------------------------------------

_FREEZE_LOCK = threading.RLock()


def _is_norm(module: torch.nn.Module) -> bool:
    return isinstance(module, torch.nn.LayerNorm) or type(module).__name__.endswith("RMSNorm")


def _frozen_norm(subject: SubjectModel):
    def hook(module, args, output):
        x = (args[0] if args else None)
        if x is None or not torch.is_tensor(output) or not output.requires_grad:
            return None
        wide = torch.promote_types(x.dtype, torch.float32)  # float32, or float64 for a float64 model
        xf, x0 = x.to(wide), x.detach().to(wide)
        eps = float(getattr(module, "eps", getattr(module, "variance_epsilon", 1e-6)))
        if isinstance(module, torch.nn.LayerNorm):
            centred, centred0 = xf - xf.mean(-1, keepdim=True), x0 - x0.mean(-1, keepdim=True)
            scale = (centred0.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            gain = module.weight if module.weight is not None else torch.ones_like(x0[0, 0])
        else:
            centred, centred0 = xf, x0
            scale = (x0.pow(2).mean(-1, keepdim=True) + eps).sqrt()
            gain = subject._norm_gain(module)
        linear = gain.to(wide).detach() * (centred - centred0) / scale  # zero-valued, the frozen-denominator Jacobian
        return output.detach() + linear.to(output.dtype)
    return hook


def _frozen_attention(original):
    def attention(module, query, key, value, *args, **kwargs):
        fn = original or sys.modules[type(module).__module__].eager_attention_forward
        return fn(module, query.detach(), key.detach(), value, *args, **kwargs)
    return attention


@contextmanager
def frozen(subject: SubjectModel) -> Iterator[None]:
    """Inside the block, gradients through ``subject`` see every attention pattern and norm denominator as a
    constant; values are unchanged. The attention function of the model's implementation is swapped process-wide
    for the block (values stay the same for any other model meanwhile) and every hook is removed on the way out."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    impl = getattr(subject.model.config, "_attn_implementation", None) or "eager"
    with _FREEZE_LOCK, ExitStack() as stack:
        local = ALL_ATTENTION_FUNCTIONS._local_mapping
        had, before = impl in local, local.get(impl)
        original = None if impl == "eager" else ALL_ATTENTION_FUNCTIONS[impl]
        local[impl] = _frozen_attention(original)
        stack.callback(lambda: local.__setitem__(impl, before) if had else local.pop(impl, None))
        hook = _frozen_norm(subject)
        for module in subject.model.modules():
            if _is_norm(module):
                stack.callback(module.register_forward_hook(hook).remove)
        yield


# ---- what causes a prediction --------------------------------------------------------------------------------

@dataclass
class Traced:
    """One forward pass with every unit's activation differentiable: ``acts[key]`` is ``[T, n]`` in the graph
    (neurons: the out projection's input; features: their encoding of the site they read, for edges into them) and
    ``leaves[key]`` the tensor whose gradient is the unit's (the same for neurons; for features the copy spliced in
    where their decoder writes: the site itself, or a transcoder's MLP output)."""

    logits: torch.Tensor
    """``[T, vocab]``."""
    acts: dict[Key, torch.Tensor] = field(default_factory=dict)
    leaves: dict[Key, torch.Tensor] = field(default_factory=dict)


@contextmanager
def _traced_units(subject: SubjectModel, saes: tuple["SAE", ...], traced: Traced) -> Iterator[None]:
    with ExitStack() as stack:
        emb = subject.model.get_input_embeddings()

        def needs_grad(_m, _a, out):
            return out.detach().requires_grad_(True)
        stack.callback(emb.register_forward_hook(needs_grad).remove)
        for layer in range(subject.info.n_layers):
            def keep(h, layer=layer):
                h.retain_grad()
                traced.acts[(MLP, layer)] = traced.leaves[(MLP, layer)] = h
                return h
            stack.enter_context(edited_site(subject, layer, "mlp_in", keep))
        for sae in saes:
            read: dict[str, torch.Tensor] = {}

            def splice(h, sae=sae, read=read):
                """``h`` (the site the dictionary writes) plus ``decode(leaf) − decode(leaf)``: zero-valued, the
                leaf's gradient is its decoder's; the features are encoded from what it reads, in the graph."""
                x = read.pop("x") if sae.is_transcoder else h
                f = sae.encode(x.float())
                leaf = f.detach().requires_grad_(True)
                traced.acts[(sae.source, sae.layer)], traced.leaves[(sae.source, sae.layer)] = f, leaf
                dec = sae.decode(leaf, x.detach().float())  # (a skip term: zero-valued, no gradient)
                return h + (dec - dec.detach()).to(h.dtype)
            if sae.is_transcoder:  # reads the MLP's normed input, kept in the graph (edges into its features)
                stack.enter_context(edited_site(subject, sae.layer, sae.site,
                                                lambda x, read=read: read.__setitem__("x", x) or x))
            stack.enter_context(edited_site(subject, sae.layer, sae.writes, splice))
        yield


def trace(subject: SubjectModel, token_ids: list[int], saes: tuple["SAE", ...] = ()) -> Traced:
    """The prompt through the frozen model with a graph (call inside ``frozen``)."""
    traced = Traced(logits=torch.empty(0))
    ids = torch.tensor([token_ids], dtype=torch.int64, device=subject.device)
    with _traced_units(subject, saes, traced), torch.inference_mode(False), torch.enable_grad():
        hidden = subject.base()(input_ids=ids, use_cache=False).last_hidden_state
        logits = subject.logits(hidden)[0]
        traced.logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    traced.acts = {k: v[0] for k, v in traced.acts.items()}
    return traced


@dataclass(frozen=True)
class Attribution:
    """Every unit's attribution to a target at every position."""

    target: Target
    value: float
    """The target's value on the clean prompt."""
    acts: dict[Key, torch.Tensor]
    """``[T, n]`` activations: every neuron of every layer and every feature of the dictionaries given."""
    scores: dict[Key, torch.Tensor]
    """``[T, n]`` attributions: activation × gradient of the target in the frozen model."""

    def total_abs(self) -> float:
        return float(sum(s.abs().sum() for s in self.scores.values()))


def attribute(subject: SubjectModel, token_ids: list[int], target: Target, saes: tuple["SAE", ...] = ()
              ) -> Attribution:
    """One forward and one backward through the frozen model: every unit's activation and attribution to ``target``
    (a target without a token: the model's top prediction at its position, in the returned ``Attribution``)."""
    check_target(subject, token_ids, target)
    with frozen(subject):
        traced = trace(subject, token_ids, saes)
        if target.token is None:
            target = replace(target, token=int(traced.logits[target.position].argmax()))
        m = target.of(traced.logits[target.position])
        keys = list(traced.leaves)
        grads = torch.autograd.grad(m, [traced.leaves[k] for k in keys], allow_unused=True)
    acts, scores = {}, {}
    for k, g in zip(keys, grads):
        a = traced.leaves[k].detach()
        a = a[0] if a.dim() == 3 else a
        g = torch.zeros_like(a) if g is None else (g[0] if g.dim() == 3 else g)
        if not torch.isfinite(g).all():
            raise UserError("the gradients are not finite (reduced precision?): run the model in float32")
        acts[k], scores[k] = a.float().cpu(), (a.float() * g.float()).cpu()
    return Attribution(target, float(m.detach()), acts, scores)


def check_target(subject: SubjectModel, token_ids: list[int], target: Target) -> None:
    if not token_ids:
        raise UserError("the text is empty: give a prompt")
    if not 0 <= target.position < len(token_ids):
        raise UserError(f"position {target.position} is out of range: the prompt has {len(token_ids)} tokens "
                        f"(0 .. {len(token_ids) - 1})")
    vocab = subject.model.get_output_embeddings().weight.shape[0]
    for t in (target.token, target.contrast):
        if t is not None and not 0 <= t < vocab:
            raise UserError(f"token id {t} is not in the vocabulary (0 .. {vocab - 1})")
