"""SAE sites and harvested features against independent computations: the hook sites against the plain HF forward
pass; harvested features against features recomputed window by window with the published formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.activations import mlp_activations, neuron_reader, sae_reader, site_activations
from analysis.config import HarvestConfig
from analysis.harvest.driver import run_harvest
from analysis.harvest.summary import summarise
from analysis.models import load_model
from analysis.sae.load import load_sae
from analysis.sae.model import parse_hook_name
from analysis.types import MLP, Window
from tests.helpers import KINDS, assert_same_top, rel_err
from tests.sae_helpers import Case, ambiguous, np_encode, random_weights, saelens_cfg, write_saelens


# ---- sites against the plain HF forward pass --------------------------------------------------------------

SITES_ALL = ("resid_pre", "resid_post", "mlp_out", "attn_out")


@pytest.mark.parametrize("kind", KINDS)
def test_sites_equal_the_plain_forward(tiny_folders, kind):
    subject = load_model(str(tiny_folders[kind]))
    n_layers = subject.info.n_layers
    torch.manual_seed(3)
    lengths = [14, 9, 4]
    ids = torch.full((3, 14), subject.pad_id)
    mask = torch.zeros((3, 14), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(3, len(subject.tokenizer), (n,))
        mask[row, :n] = 1
    real = mask.bool()
    with torch.no_grad():
        hs = subject.model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(hs) == n_layers + 1
    sites = [(layer, s) for layer in range(n_layers) for s in SITES_ALL]
    got = site_activations(subject, ids, mask, sites)
    neurons = mlp_activations(subject, ids, mask, list(range(n_layers)))
    for layer in range(n_layers):
        g = {s: got[(layer, s)][real] for s in SITES_ALL}
        assert all(v.shape == (sum(lengths), subject.d_model) for v in g.values())
        assert rel_err(g["resid_pre"], hs[layer][real]) <= 1e-5, layer
        if layer < n_layers - 1:
            assert rel_err(g["resid_post"], hs[layer + 1][real]) <= 1e-5, layer
        else:  # HF applies the final norm to the last hidden state
            with torch.no_grad():
                normed = subject.final_norm()(got[(layer, "resid_post")])
            assert rel_err(normed[real], hs[layer + 1][real]) <= 1e-5
        # both sublayers write into the one residual stream (NeoX's parallel residual included)
        delta = g["resid_post"].double() - g["resid_pre"].double()
        assert rel_err(g["attn_out"] + g["mlp_out"].double(), delta) <= 1e-5, layer
        # mlp_out is the output projection of the neurons (then Gemma's post-norm), written out by hand
        a = neurons[layer][real].double()
        mlp = subject.mlp(layer)
        if kind == "gpt2":
            ref = a @ mlp.c_proj.weight.double() + mlp.c_proj.bias.double()  # Conv1D: [in, out]
        elif kind == "neox":
            ref = a @ mlp.dense_4h_to_h.weight.double().T + mlp.dense_4h_to_h.bias.double()
        elif kind == "llama":
            ref = a @ mlp.down_proj.weight.double().T
        else:  # Gemma 3: RMSNorm with gain (1 + w) after the down projection
            y = a @ mlp.down_proj.weight.double().T
            norm = subject.blocks()[layer].post_feedforward_layernorm
            ref = y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight.double())
        assert rel_err(g["mlp_out"], ref) <= 1e-5, layer


# ---- harvested features against recomputed ones -----------------------------------------------------------

HCFG = HarvestConfig(layers=(1,), seq_len=16, top_k=4, random_k=3, quantile_bins=2, per_bin=2, pool=6,
                     batch_size=4, token_table=30, min_token_count=2, seed=3)


@pytest.fixture(scope="module")
def bos_subject(tmp_path_factory):
    from tests.helpers import tiny_model_folder

    folder = tiny_model_folder(tmp_path_factory.mktemp("bos_model") / "gpt2-bos", "gpt2", bos=True, seed=4)
    subject = load_model(str(folder))
    assert subject.info.prepend_bos and subject.bos_prefix == [subject.tokenizer.bos_token_id]
    return subject


@pytest.fixture(scope="module")
def harvest_windows(bos_subject):
    rng = np.random.default_rng(11)
    V = len(bos_subject.tokenizer)
    out = []
    for i in range(18):
        n = 16 if i % 4 else int(rng.integers(5, 16))  # some short (padded) windows
        ids = rng.integers(3, 40 if i % 3 else V, size=n)
        out.append(Window(window_id=2 * i + 5, doc_id=i // 3, offset=(i % 3) * 16,
                          token_ids=tuple(int(t) for t in ids)))
    return out


@pytest.fixture(scope="module")
def harvest_saes(bos_subject, tmp_path_factory):
    """(sae, weights, case) for a TopK and a JumpReLU over resid_post and a TopK over mlp_out, all at layer 1."""
    root = tmp_path_factory.mktemp("harvest_saes")
    rng = np.random.default_rng(12)
    d = bos_subject.d_model
    out = []
    for name, hook, arch, k, apply_b_dec in (("topk-res", "blocks.1.hook_resid_post", "topk", 6, True),
                                              ("jump-res", "blocks.1.hook_resid_post", "jumprelu", None, False),
                                              ("topk-mlp", "blocks.1.hook_mlp_out", "topk", 5, False)):
        w = random_weights(rng, d, 48)
        w["threshold"] = rng.uniform(0, 6, 48).astype(np.float32)  # site vectors here are ~5-20 long
        folder = write_saelens(root / name, saelens_cfg(hook, arch, d, 48, k=k, apply_b_dec=apply_b_dec), w,
                               arch == "jumprelu")
        sae = load_sae(str(folder))
        case = Case(name, d, 48, arch, 1, parse_hook_name(hook)[1], "saelens", k=k, subtract_b_dec=apply_b_dec)
        out.append((sae, w, case))
    return out


def _reference_sites(subject, window: Window) -> dict[str, np.ndarray]:
    """Layer 1's resid_post and mlp_out of one window run alone through the plain HF model (BOS prefix first, as
    the harvest runs it; the prefix column dropped)."""
    ids = torch.tensor([subject.bos_prefix + list(window.token_ids)])
    n = len(subject.bos_prefix)
    captured = {}
    handle = subject.mlp(1).register_forward_hook(lambda _m, _a, out: captured.__setitem__("mlp", out))
    try:
        with torch.no_grad():
            hs = subject.model(input_ids=ids, output_hidden_states=True).hidden_states
    finally:
        handle.remove()
    return {"resid_post": hs[2][0, n:].double().numpy(), "mlp_out": captured["mlp"][0, n:].double().numpy()}


@pytest.fixture(scope="module")
def harvested(bos_subject, harvest_windows, harvest_saes):
    readers = [neuron_reader(1)] + [sae_reader(sae) for sae, _w, _c in harvest_saes]
    state, table = run_harvest(bos_subject, harvest_windows, HCFG, progress=False, readers=readers)
    return {s.source: s for s in summarise(state, table)}


def test_harvested_features_equal_features_recomputed_per_window(bos_subject, harvest_windows, harvest_saes,
                                                                 harvested):
    sites = {w.window_id: _reference_sites(bos_subject, w) for w in harvest_windows}
    wids = np.array([w.window_id for w in harvest_windows])
    n_tokens = sum(len(w.token_ids) for w in harvest_windows)
    for sae, w, case in harvest_saes:
        s = harvested[sae.source]
        assert s.layer == 1 and s.n_tokens == n_tokens and s.top_acts.shape[1] == sae.d_sae
        feats, unsure = {}, np.zeros(sae.d_sae, dtype=bool)
        for wid, site in sites.items():
            f, pre = np_encode(site[case.site], w, case.arch, case.k, case.subtract_b_dec, return_pre=True)
            feats[wid] = f
            unsure |= ambiguous(pre, case, w).any(0)  # some token's pre-activation near a decision boundary
        checked = np.nonzero(~unsure)[0]
        assert len(checked) >= 0.9 * sae.d_sae, case.name
        maxima = np.array([feats[wid].max(0) for wid in wids])  # [W, d_sae]
        allf = np.concatenate([feats[wid] for wid in wids], 0)
        assert (maxima[:, checked] > 0).any(0).sum() >= len(checked) // 2  # mostly live features
        for u in checked:
            # the k largest window maxima, each held by the window named (near-ties may be broken either way)
            assert_same_top(s.top_wid[:, u], s.top_val[:, u], wids, maxima[:, u], rtol=1e-4, atol=1e-5)
            for rank, wid in enumerate(s.top_wid[:, u]):
                ref = feats[int(wid)][:, u]
                got = s.top_acts[rank, u, : len(ref)].astype(np.float64)  # stored as float16
                np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3)
                assert not s.top_acts[rank, u, len(ref):].any()  # padding stored as 0
        np.testing.assert_allclose(s.mean[checked], allf[:, checked].mean(0), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(s.frac_active[checked], (allf[:, checked] > 0).mean(0))
        np.testing.assert_allclose(s.vmax[checked], allf[:, checked].max(0), rtol=1e-4, atol=1e-5)


def test_adding_saes_leaves_the_neurons_unchanged(bos_subject, harvest_windows, harvested):
    state, table = run_harvest(bos_subject, harvest_windows, HCFG, progress=False, readers=[neuron_reader(1)])
    (alone,) = summarise(state, table)
    together = harvested[MLP]
    assert alone.source == together.source == MLP
    fields = {**vars(alone), **{f"token_means.{k}": v for k, v in vars(alone.token_means).items()}}
    for name, value in fields.items():
        head, _, tail = name.partition(".")
        other = getattr(getattr(together, head), tail) if tail else getattr(together, name)
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype, name
            assert np.array_equal(value, other, equal_nan=value.dtype.kind == "f"), name  # bit for bit
        elif name != "token_means":  # its columns are compared as arrays
            assert value == other, name
