"""Run a subject model and capture MLP neuron activations.

The hooks live in one context manager that always removes them. A forward pass stops right after the last
requested layer's MLP has been read (the remaining blocks, the final norm and the lm_head never run).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

from analysis.models import SubjectModel


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass early."""


@contextmanager
def neuron_hooks(subject: SubjectModel, layers: list[int], stop_after_last: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Attach pre-hooks on the MLP output projections of ``layers``; yield the dict they fill.

    After a forward pass, ``captured[layer]`` is the projection's input, ``[batch, pos, d_mlp]``.
    """
    captured: dict[int, torch.Tensor] = {}
    last = max(layers)
    handles = []

    def make_hook(layer: int):
        def hook(_module, args):
            captured[layer] = args[0].detach()
            if stop_after_last and layer == last:
                raise _StopForward

        return hook

    try:
        for layer in sorted(set(layers)):
            subject.check_layer(layer)
            handles.append(subject.out_proj(layer).register_forward_pre_hook(make_hook(layer)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@torch.inference_mode()
def mlp_activations(
    subject: SubjectModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    layers: list[int],
) -> dict[int, torch.Tensor]:
    """Neuron activations ``{layer: [batch, pos, d_mlp] float32}`` for a right-padded batch.

    Runs the decoder only up to ``max(layers)``; never computes the lm_head. Positions where
    ``attention_mask`` is 0 hold garbage (possibly NaN): callers mask them.
    """
    device = subject.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    with neuron_hooks(subject, layers) as captured:
        try:
            subject.base()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [layer for layer in layers if layer not in captured]
    if missing:
        raise RuntimeError(f"hooks for layers {missing} did not fire")
    return {layer: captured[layer].float() for layer in layers}
