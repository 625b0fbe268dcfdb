"""The attribute job (analysis/jobs/attribute.py) on a real harvest of the tiny GPT-2 (layers 0 and 1 harvested,
layer 2 not): the target, the notes, the maxima from the store, the lists, the check, the graph, the JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis.attribution.units import Target
from analysis.jobs.attribute import AttributeJob, attribute_prompt
from analysis.types import MLP, UnitId, UserError
from tests.helpers import assert_same_top

TEXT = "Paris is the capital of France."


@pytest.fixture(scope="module")
def subject(viewer_db):
    from analysis.models import load_model

    return load_model(viewer_db[1])


def _logits(subject, ids) -> torch.Tensor:
    with torch.no_grad():
        return subject.model(input_ids=torch.tensor([ids]), use_cache=False).logits[0]


def _neurons(subject, ids, zero: tuple[int, int, int] | None = None):
    """Every layer's neurons (the out projection's input, read by a hook here) and the logits; ``zero``:
    (layer, position, index) set to 0 first."""
    acts, handles = {}, []
    for layer in range(subject.info.n_layers):
        def hook(_m, args, layer=layer):
            h = args[0].clone()
            if zero is not None and zero[0] == layer:
                h[0, zero[1], zero[2]] = 0.0
            acts[layer] = h[0]
            return (h,)
        handles.append(subject.out_proj(layer).register_forward_pre_hook(hook))
    try:
        logits = _logits(subject, ids)
    finally:
        for h in handles:
            h.remove()
    return acts, logits


def _store_maxima(db, model, source=MLP, layers=(0, 1), n=None) -> dict[int, np.ndarray]:
    """Each unit's maximum as the store's per-unit stats give it."""
    from cache.store import open_store

    with open_store(db, read_only=True) as store:
        info = store.catalog.model(model)
        out = {}
        for layer in layers:
            run = store.runs.find(info.model_id, layer, source=source)
            units = range(n if n is not None else info.d_mlp)
            out[layer] = np.array([store.records.unit_stats(run.run_id, UnitId(source, layer, u)).max for u in units])
        assert store.runs.find(info.model_id, 2) is None  # layer 2 has no harvest
    return out


def _uid(u) -> str:
    return f"{u.unit}@{u.position}"


def test_report_on_a_harvest(viewer_db, subject):
    db, model = viewer_db
    rep = attribute_prompt(AttributeJob(text=TEXT, model=model, check=8, graph=True, graph_nodes=6), db)
    ids = subject.bos_prefix + subject.tokenize(TEXT)
    T = len(ids)
    acts, logits = _neurons(subject, ids)
    assert rep.token_ids == ids and len(rep.tokens) == T
    # no target given: the model's own top prediction at the last token
    assert rep.target == Target(T - 1, int(logits[-1].argmax())) and rep.target_text == subject.tokenizer.decode(
        [rep.target.token])
    assert rep.attribution.value == pytest.approx(float(logits[-1].max()), rel=1e-5, abs=1e-5)

    # maxima: the store's unit stats; layer 2 (no harvest) ranked raw and said
    maxima = _store_maxima(db, model)
    assert rep.raw_keys == [(MLP, 2)] and any("layer(s) 2" in n and "raw activation" in n for n in rep.notes)
    a_max = max(float(a.abs().max()) for a in acts.values())
    m_min = min(float(m[m > 0].min()) for m in maxima.values())
    # activations agree to 1e-5 relative above 1, so relative ones to that over the smallest maximum
    tol = 1e-5 * max(1.0, a_max) / m_min
    cands, values, raw_cands, raw_values = [], [], [], []
    for layer in range(3):
        a = acts[layer].double().numpy()
        if layer in maxima:
            m = maxima[layer]
            want = np.where(m > 0, a / np.where(m > 0, m, 1.0), 0.0)
        else:
            want = a
        np.testing.assert_allclose(rep.relative[(MLP, layer)].numpy(), want, rtol=0, atol=tol)
        names, vals = (cands, values) if layer in maxima else (raw_cands, raw_values)  # raw ones ranked apart
        names += [f"L{layer}/N{u}@{t}" for t in range(1, T) for u in range(a.shape[1])]
        vals += [want[t, u] for t in range(1, T) for u in range(a.shape[1])]
    # the first token is left out (said); the rest ranked by relative activation
    assert any("first token" in n for n in rep.notes) and all(u.position >= 1 for u in rep.fires)
    assert len(rep.fires) == 20
    assert_same_top([_uid(u) for u in rep.fires], [u.value for u in rep.fires], cands, values, rtol=0, atol=tol)
    assert all(u.position >= 1 for u in rep.fires_raw) and len(rep.fires_raw) == 20
    assert_same_top([_uid(u) for u in rep.fires_raw], [u.value for u in rep.fires_raw], raw_cands, raw_values,
                    rtol=0, atol=1e-5 * max(1.0, a_max))

    # the check: the 8 largest |attribution| (positions >= 1), each ablated for real
    scores = rep.attribution.scores
    assert len(rep.checked) == 8 and all(c.unit.position >= 1 for c in rep.checked)
    everything = sorted((abs(float(s[t, u])) for s in scores.values() for t in range(1, T) for u in range(s.shape[1])),
                        reverse=True)
    assert [abs(c.unit.value) for c in rep.checked] == everything[:8]
    for c in rep.checked:
        key = (c.unit.unit.source, c.unit.unit.layer)
        assert c.estimate == -float(scores[key][c.unit.position, c.unit.unit.index])
    c = rep.checked[0]
    _, ablated = _neurons(subject, ids, (c.unit.unit.layer, c.unit.position, c.unit.unit.index))
    m0, m1 = float(logits[-1, rep.target.token]), float(ablated[-1, rep.target.token])
    assert c.real == pytest.approx(m1 - m0, abs=1e-5 * (max(1.0, abs(m0)) + max(1.0, abs(m1))))
    assert rep.rank_correlation is None or -1.0 <= rep.rank_correlation <= 1.0

    # the graph: at most 6 nodes, the top of the check, edges forward in layers or into the target
    g = rep.graph
    assert 0 < len(g.nodes) <= 6 and [_uid(n) for n in g.nodes] == [_uid(c.unit) for c in rep.checked][:len(g.nodes)]
    for e in g.edges:
        if e.target == len(g.nodes):
            assert e.weight == g.nodes[e.source].value
            continue
        source_layer = g.nodes[e.source].unit.layer if e.source >= 0 else -1 - e.source
        assert 0 <= e.target < len(g.nodes) and source_layer < g.nodes[e.target].unit.layer, e

    # the JSON round-trips
    out = rep.to_json()
    assert json.loads(json.dumps(out)) == out
    assert out["target"]["token_id"] == rep.target.token and len(out["check"]["units"]) == 8
    assert len(out["graph"]["nodes"]) == len(g.nodes) and out["notes"] == rep.notes


def test_target_contrast_and_position(viewer_db, subject):
    db, model = viewer_db
    tok = subject.tokenizer
    target_ids = tok.encode(" capital city", add_special_tokens=False)
    assert len(target_ids) > 1
    rep = attribute_prompt(AttributeJob(text=TEXT, model=model, target=" capital city", contrast="x", position=3,
                                        check=2), db)
    ids = subject.bos_prefix + subject.tokenize(TEXT)
    contrast = tok.encode("x", add_special_tokens=False)
    assert len(contrast) == 1
    assert rep.target == Target(3, target_ids[0], contrast[0])
    assert any(f"is {len(target_ids)} tokens" in n and "first" in n for n in rep.notes)
    logits = _logits(subject, ids)
    assert rep.attribution.value == pytest.approx(float(logits[3, target_ids[0]] - logits[3, contrast[0]]), abs=2e-5)
    assert rep.to_json()["target"]["contrast"] == "x"
    # nothing after the target's position reaches it
    assert all(not s[4:].any() for s in rep.attribution.scores.values())


def test_bad_prompts_get_messages(viewer_db):
    db, model = viewer_db
    with pytest.raises(UserError, match="empty"):
        attribute_prompt(AttributeJob(text="  ", model=model), db)
    with pytest.raises(UserError, match="position 999 is out of range"):
        attribute_prompt(AttributeJob(text=TEXT, model=model, position=999), db)
    with pytest.raises(UserError, match="'sae:nope' is not a dictionary of"):
        attribute_prompt(AttributeJob(text=TEXT, model=model, sae=("sae:nope",)), db)


def test_a_text_over_the_context_is_cut(viewer_db, subject):
    db, model = viewer_db
    limit = subject.context_length
    text = " ".join([TEXT] * 12)
    n = len(subject.bos_prefix + subject.tokenize(text))
    assert n > limit
    rep = attribute_prompt(AttributeJob(text=text, model=model, check=0, top=3), db)
    assert len(rep.token_ids) == limit and rep.token_ids == (subject.bos_prefix + subject.tokenize(text))[:limit]
    assert any(f"the text is {n} tokens" in n_ and f"cut to its first {limit}" in n_ for n_ in rep.notes)
    assert rep.target.position == limit - 1 and rep.checked == [] and rep.graph is None


def test_sae_features_are_units(sae_db, subject):
    from analysis.sae.saelens import load_saelens

    db, model, folder = sae_db
    rep = attribute_prompt(AttributeJob(text=TEXT, model=model, check=8, top=10_000), db)
    sources = {k[0] for k in rep.attribution.scores} - {MLP}
    assert len(sources) == 1
    source = sources.pop()
    sae = load_saelens(folder)
    assert (source, 1) in rep.relative and (source, 1) not in rep.raw_keys
    ids = rep.token_ids
    # features by hand from the block's output, over the store's maxima
    site = {}
    handle = subject.blocks()[1].register_forward_hook(
        lambda _m, _a, out: site.__setitem__("x", (out[0] if isinstance(out, tuple) else out)[0].detach().clone()))
    try:
        _logits(subject, ids)
    finally:
        handle.remove()
    assert sae.input_scale == 1.0 and sae.architecture == "topk"
    pre = (site["x"].double() - sae.b_dec.double() * sae.apply_b_dec_to_input) @ sae.W_enc.double() + sae.b_enc.double()
    kth = pre.topk(sae.k, dim=-1).values[:, -1:]
    f = torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre)).numpy()
    m = _store_maxima(db, model, source=source, layers=(1,), n=sae.d_sae)[1]
    want = np.where(m > 0, f / np.where(m > 0, m, 1.0), 0.0)
    tol = 1e-5 * max(1.0, float(np.abs(f).max())) / float(m[m > 0].min())
    np.testing.assert_allclose(rep.relative[(source, 1)].numpy(), want, rtol=0, atol=tol)
    assert np.abs(f).max() > 0
    listed = {u.unit.source for u in rep.fires} | {u.unit.source for u in rep.positive + rep.negative}
    assert source in listed and MLP in listed
    assert json.loads(json.dumps(rep.to_json()))["attribution"]["positive"]


def test_transcoder_features_are_units(transcoder_db, subject):
    """A transcoder's features: encoded from the MLP's normed input (ln_2's output), over the store's maxima; the
    check removes a feature's decoder row times its activation from the MLP's output; the graph takes them."""
    from cache.store import open_store

    db, model, folder, tc = transcoder_db
    by_name = attribute_prompt(AttributeJob(text="Paris is", model=model, sae=("tiny-tc",)), db)  # its bare name
    assert (tc.source, 1) in by_name.relative  # its features are among the units
    rep = attribute_prompt(AttributeJob(text=TEXT, model=model, check=8, top=10_000, graph=True, graph_nodes=8), db)
    source = tc.source
    assert {k[0] for k in rep.attribution.scores} == {MLP, source}
    with open_store(db, read_only=True) as store:
        assert store.catalog.dictionary(source).kind == "transcoder"
    assert (source, 1) in rep.relative and (source, 1) not in rep.raw_keys
    ids = rep.token_ids
    seen = {}
    handle = subject.blocks()[1].ln_2.register_forward_hook(
        lambda _m, _a, out: seen.__setitem__("x", out[0].detach().clone()))
    try:
        clean = _logits(subject, ids)
    finally:
        handle.remove()
    pre = seen["x"].double() @ tc.W_enc.double() + tc.b_enc.double()
    kth = pre.topk(tc.k, dim=-1).values[:, -1:]
    f = torch.where(pre >= kth, pre.clamp(min=0), torch.zeros_like(pre))
    m = _store_maxima(db, model, source=source, layers=(1,), n=tc.d_sae)[1]
    want = np.where(m > 0, f.numpy() / np.where(m > 0, m, 1.0), 0.0)
    tol = 1e-5 * max(1.0, float(f.abs().max())) / float(m[m > 0].min())
    np.testing.assert_allclose(rep.relative[(source, 1)].numpy(), want, rtol=0, atol=tol)

    checked = [c for c in rep.checked if c.unit.unit.source == source]
    assert checked  # its decoder is large: its features are among the top causes
    c = checked[0]
    t, i = c.unit.position, c.unit.unit.index

    def minus(_m, _a, out):
        out = out.clone()
        out[0, t] = (out[0, t].double() - f[t, i] * tc.W_dec[i].double()).to(out.dtype)
        return out
    handle = subject.mlp(1).register_forward_hook(minus)
    try:
        ablated = _logits(subject, ids)
    finally:
        handle.remove()
    target = rep.target
    m0, m1 = float(target.of(clean[target.position])), float(target.of(ablated[target.position]))
    assert c.real == pytest.approx(m1 - m0, abs=1e-5 * (max(1.0, abs(m0)) + max(1.0, abs(m1))))
    assert any(n.unit.source == source for n in rep.graph.nodes)
    assert json.loads(json.dumps(rep.to_json()))["check"]["units"]
