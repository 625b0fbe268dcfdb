"""Weight-based connections of a neuron (OpenAI's neuron-explainer conventions, generalised).

For GPT-2 the published definitions are, with ``g`` the gain of the norm in front of the reading matrix:
- token -> neuron (input weight):   ``wte[t] . diag(g_mlp[l]) . W_in[l][:, n]``
- neuron -> token (output weight):  ``W_out[l][n] . diag(g_final) . W_U[:, t]``
- neuron -> neuron, l1 < l2:        ``W_out[l1][n1] . diag(g_mlp[l2]) . W_in[l2][:, n2]``
Generalised: RMSNorm gains as LayerNorm gains (Gemma's ``1 + w``); for gated MLPs (act(gate) * up) the input
direction is the gate projection, which decides whether the neuron fires (``RelatedWeights.note`` says so).
Norm means/scales and biases are ignored, as in the published definitions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from analysis.models import SubjectModel


@dataclass(frozen=True)
class WeightLink:
    """One connection: a token (``layer`` is None) or a neuron, with its weight."""

    weight: float
    token_id: int | None = None
    layer: int | None = None
    neuron: int | None = None


@dataclass(frozen=True)
class RelatedWeights:
    input_tokens_pos: list[WeightLink]
    input_tokens_neg: list[WeightLink]
    output_tokens_pos: list[WeightLink]
    output_tokens_neg: list[WeightLink]
    upstream_pos: list[WeightLink]
    """Neurons of earlier layers whose output most excites this neuron's input."""
    upstream_neg: list[WeightLink]
    downstream_pos: list[WeightLink]
    """Neurons of later layers this neuron's output most excites."""
    downstream_neg: list[WeightLink]
    note: str


def _top(scores: torch.Tensor, k: int, largest: bool):
    k = min(k, scores.numel())
    vals, idx = torch.topk(scores, k, largest=largest)
    return vals.tolist(), idx.tolist()


@torch.no_grad()
def related_weights(subject: SubjectModel, layer: int, neuron: int, k: int = 10) -> RelatedWeights:
    subject.check_layer(layer)
    subject.check_neuron(neuron)
    f = lambda t: t.detach().float()  # noqa: E731
    w_in_n = f(subject.w_in(layer)[neuron])  # [d]
    read = w_in_n * f(subject.mlp_norm_gain(layer))  # what the neuron reads, in residual-stream units
    write = f(subject.w_out(layer)[neuron])  # [d]
    emb = f(subject.model.get_input_embeddings().weight)  # [V, d]
    unemb = f(subject.model.get_output_embeddings().weight)  # [V, d]
    tok_in = emb @ read
    tok_out = unemb @ (write * f(subject.final_norm_gain()))

    def tokens(scores, largest):
        vals, idx = _top(scores, k, largest)
        return [WeightLink(weight=v, token_id=i) for v, i in zip(vals, idx)]

    up_scores, up_ids = [], []
    for l1 in range(layer):
        up_scores.append(f(subject.w_out(l1)) @ read)
        up_ids.append(l1)
    down_scores, down_ids = [], []
    for l2 in range(layer + 1, subject.info.n_layers):
        down_scores.append(f(subject.w_in(l2)) @ (write * f(subject.mlp_norm_gain(l2))))
        down_ids.append(l2)

    def neurons(score_list, layer_ids, largest):
        if not score_list:
            return []
        flat = torch.cat(score_list)
        d = score_list[0].numel()
        vals, idx = _top(flat, k, largest)
        return [WeightLink(weight=v, layer=layer_ids[i // d], neuron=i % d) for v, i in zip(vals, idx)]

    gated = subject.arch.gated
    note = ("input = gate projection (act(gate)·up MLP); " if gated else "input = MLP input projection; ") + \
        "norm gains included, norm centring/scale and biases ignored (OpenAI's convention)"
    return RelatedWeights(
        input_tokens_pos=tokens(tok_in, True), input_tokens_neg=tokens(tok_in, False),
        output_tokens_pos=tokens(tok_out, True), output_tokens_neg=tokens(tok_out, False),
        upstream_pos=neurons(up_scores, up_ids, True), upstream_neg=neurons(up_scores, up_ids, False),
        downstream_pos=neurons(down_scores, down_ids, True), downstream_neg=neurons(down_scores, down_ids, False),
        note=note,
    )


@dataclass(frozen=True)
class FeatureWeights:
    """Weight-based connections of one dictionary feature (``analysis/sae.py``)."""

    output_tokens_pos: list[WeightLink]
    """Tokens its decoder direction promotes: ``W_dec[f] . diag(g_final) . W_U[:, t]`` (direct path)."""
    output_tokens_neg: list[WeightLink]
    input_tokens_pos: list[WeightLink]
    """Tokens whose embedding its encoder reads most: ``wte[t] . W_enc[:, f]`` (direct path; a dictionary that reads
    the MLP's normed input, as a transcoder: ``wte[t] . diag(g_mlp) . W_enc[:, f]``)."""
    input_tokens_neg: list[WeightLink]
    nearest: list[WeightLink]
    """Features with the most similar decoder direction (cosine; ``neuron`` holds the feature index)."""
    neurons: list[WeightLink]
    """MLP neurons (of layers up to the site; before a transcoder's layer) whose output direction its encoder
    (norm gain in, where it reads the MLP's normed input) reads most (cosine)."""
    note: str


@torch.no_grad()
def feature_weights(subject: SubjectModel, sae, index: int, k: int = 10) -> FeatureWeights:
    """Connections of feature ``index`` of ``sae`` through the model's weights (norm gains in, as above)."""
    if not 0 <= index < sae.d_sae:
        raise ValueError(f"feature {index} does not exist: {sae.name} has features 0..{sae.d_sae - 1}")
    f = lambda t: t.detach().float().cpu()  # noqa: E731
    W_dec, W_enc = f(sae.W_dec), f(sae.W_enc)
    dec, enc = W_dec[index], W_enc[:, index]
    normed = sae.site == "mlp_input"  # (a transcoder's input) read after the pre-MLP norm: its gain in the weights
    if normed:
        enc = enc * f(subject.mlp_norm_gain(sae.layer))
    emb = f(subject.model.get_input_embeddings().weight)
    unemb = f(subject.model.get_output_embeddings().weight)
    tok_out = unemb @ (dec * f(subject.final_norm_gain()))
    tok_in = emb @ enc

    def tokens(scores, largest):
        vals, idx = _top(scores, k, largest)
        return [WeightLink(weight=v, token_id=i) for v, i in zip(vals, idx)]

    unit = lambda m: m / m.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # noqa: E731
    cos = unit(W_dec) @ unit(dec)
    cos[index] = -2.0
    vals, idx = _top(cos, k, True)
    nearest = [WeightLink(weight=v, layer=sae.layer, neuron=i) for v, i in zip(vals, idx)]
    # neurons that write into the stream the encoder reads: layers before the site's layer, and the site's own
    # layer when the site comes after that layer's MLP (not mlp_input: the MLP's input)
    last = sae.layer if sae.site in ("resid_post", "mlp_out") else sae.layer - 1
    scores, layer_ids = [], []
    for layer in range(0, last + 1):
        scores.append(unit(f(subject.w_out(layer))) @ unit(enc))
        layer_ids.append(layer)
    neurons = []
    if scores:
        flat = torch.cat(scores)
        d = scores[0].numel()
        vals, idx = _top(flat, k, True)
        neurons = [WeightLink(weight=v, layer=layer_ids[i // d], neuron=i % d) for v, i in zip(vals, idx)]
    what = (f"reads {sae.site}, writes {sae.writes}" if sae.is_transcoder else f"over {sae.site}") + \
        f" of layer {sae.layer}; "
    note = (what + "direct paths only: output tokens through the final norm gain and the unembedding; input tokens "
            "by the embedding" + (" through the pre-MLP norm gain" if normed else "") +
            "; the rest of the model (attention, other MLPs) is ignored")
    return FeatureWeights(output_tokens_pos=tokens(tok_out, True), output_tokens_neg=tokens(tok_out, False),
                          input_tokens_pos=tokens(tok_in, True), input_tokens_neg=tokens(tok_in, False),
                          nearest=nearest, neurons=neurons, note=note)
