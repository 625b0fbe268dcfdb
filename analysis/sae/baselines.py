"""Baseline dictionaries at a site, for comparing kinds of units: the residual basis and seeded random directions."""

from __future__ import annotations


import torch

from analysis.types import UserError
from analysis.sae.model import SAE, finish

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
    return finish(sae)
