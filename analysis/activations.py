"""Run a subject model and capture unit activations at hook sites.

A site is (layer, kind): ``mlp_in`` (the neurons: the input of the MLP output projection) or one of the
residual-stream sites of ``analysis/sae.py`` (``resid_pre``, ``resid_post``, ``mlp_out``, ``attn_out``). A
``Reader`` turns one site's vectors into one source's units: the neurons as they are, a dictionary's features
by encoding. The hooks live in one context manager that always removes them; a forward pass stops as soon as
every requested site has been read (the remaining blocks, the final norm and the lm_head never run).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import torch

from analysis.models import SubjectModel
from analysis.types import MLP

if TYPE_CHECKING:
    from analysis.sae.model import SAE

NEURONS = "mlp_in"
"""The site of the MLP neurons."""


class _StopForward(Exception):
    """Raised by the last hook to end the forward pass early."""


@dataclass(frozen=True)
class Reader:
    """One source's units at one layer: the site they are read from, and the map from site vectors to units."""

    source: str
    layer: int
    sae: "SAE | None" = None
    """None for the neurons; else the dictionary that encodes the site."""

    @property
    def site(self) -> str:
        return NEURONS if self.sae is None else self.sae.site

    @property
    def key(self) -> tuple[str, int]:
        return self.source, self.layer

    def units(self, site_acts: torch.Tensor) -> torch.Tensor:
        """``[..., n_units]`` float32 from the site's ``[..., width]``."""
        return site_acts.float() if self.sae is None else self.sae.encode(site_acts.float())

    def positions(self, site_acts: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """Where this source's units are defined (``[B, T]`` bool): every real token for the neurons; for a
        dictionary, the real tokens that are not massive activations (``analysis.sae.model.typical_positions``)."""
        if self.sae is None:
            return real
        from analysis.sae.model import typical_positions

        return typical_positions(site_acts, real)


def neuron_reader(layer: int) -> Reader:
    return Reader(MLP, layer)


def sae_reader(sae: "SAE") -> Reader:
    return Reader(sae.source, sae.layer, sae)


@contextmanager
def site_hooks(subject: SubjectModel, sites: list[tuple[int, str]], stop_when_done: bool = True
               ) -> Iterator[dict[tuple[int, str], torch.Tensor]]:
    """Attach hooks that fill ``captured[(layer, site)]`` with ``[batch, pos, width]`` during a forward pass; with
    ``stop_when_done`` the pass ends (``_StopForward``) once all of them are read."""
    wanted = sorted(set(sites))
    captured: dict[tuple[int, str], torch.Tensor] = {}
    handles = []

    def keep(key, tensor):
        captured[key] = (tensor[0] if isinstance(tensor, tuple) else tensor).detach()
        if stop_when_done and len(captured) == len(wanted):
            raise _StopForward

    def pre_hook(key):
        def hook(_module, args, kwargs):
            keep(key, args[0] if args else kwargs["hidden_states"])
        return hook

    def post_hook(key):
        def hook(_module, _args, output):
            keep(key, output)
        return hook

    try:
        for layer, site in wanted:
            module, is_pre = subject.site_module(layer, site)
            handles.append(module.register_forward_pre_hook(pre_hook((layer, site)), with_kwargs=True) if is_pre
                           else module.register_forward_hook(post_hook((layer, site))))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def edited_site(subject: SubjectModel, layer: int, site: str, edit: Callable[[torch.Tensor], torch.Tensor],
                first: bool = False) -> Iterator[None]:
    """Inside the ``with`` block, forward passes see the site's vectors (``[batch, pos, width]``) replaced by
    ``edit`` of them; ``first``: before any other hook on that module. The hook is always removed."""
    module, is_pre = subject.site_module(layer, site)

    def pre_hook(_module, args, kwargs):
        if args:
            return (edit(args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": edit(kwargs["hidden_states"])}

    def post_hook(_module, _args, output):
        return (edit(output[0]), *output[1:]) if isinstance(output, tuple) else edit(output)

    handle = (module.register_forward_pre_hook(pre_hook, with_kwargs=True, prepend=first) if is_pre
              else module.register_forward_hook(post_hook, prepend=first))
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def edited_features(subject: SubjectModel, sae: "SAE", edit: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                    ) -> Iterator[None]:
    """Inside the ``with`` block, forward passes see the site a dictionary writes (``sae.writes``) replaced by
    ``edit(h, x)``: ``h`` that site's vectors, ``x`` the vectors the dictionary reads at the same positions (for an
    autoencoder ``h`` itself; for a transcoder the MLP's normed input, read earlier in the same block). The hooks
    are always removed."""
    if not sae.is_transcoder:
        with edited_site(subject, sae.layer, sae.site, lambda h: edit(h, h)):
            yield
        return
    key = (sae.layer, sae.site)
    with site_hooks(subject, [key], stop_when_done=False) as captured, \
            edited_site(subject, sae.layer, sae.output_site, lambda h: edit(h, captured[key])):
        yield


@torch.inference_mode()
def site_activations(subject: SubjectModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     sites: list[tuple[int, str]]) -> dict[tuple[int, str], torch.Tensor]:
    """``{(layer, site): [batch, pos, width]}`` (model dtype) for a right-padded batch; runs the decoder only as
    far as the last site. Positions where ``attention_mask`` is 0 hold garbage (possibly NaN): callers mask them."""
    device = subject.device
    input_ids = input_ids.to(device)
    if attention_mask is not None:
        attention_mask = attention_mask.to(device)
    with site_hooks(subject, sites) as captured:
        try:
            subject.base()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        except _StopForward:
            pass
    missing = [s for s in sites if s not in captured]
    if missing:
        raise RuntimeError(f"hooks for sites {missing} did not fire")
    return captured


def unit_activations(subject: SubjectModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                     readers: list[Reader]) -> dict[tuple[str, int], torch.Tensor]:
    """``{(source, layer): [batch, pos, n_units] float32}``: every reader's units from one forward pass."""
    acts = site_activations(subject, input_ids, attention_mask, [(r.layer, r.site) for r in readers])
    with torch.inference_mode():
        return {r.key: r.units(acts[(r.layer, r.site)]) for r in readers}


def mlp_activations(subject: SubjectModel, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                    layers: list[int]) -> dict[int, torch.Tensor]:
    """Neuron activations ``{layer: [batch, pos, d_mlp] float32}`` for a right-padded batch."""
    acts = unit_activations(subject, input_ids, attention_mask, [neuron_reader(layer) for layer in layers])
    return {layer: acts[(MLP, layer)] for layer in layers}
