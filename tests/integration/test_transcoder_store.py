"""Transcoders with the real things: a transcoder feature's activation equals an independent numpy encode of the HF
model's MLP input (the hidden state after the pre-MLP norm, captured from the norm module itself) on the embedded
SmolLM2 and on harvested windows of a tiny model; the harvest, the records and the CLI take it like any dictionary."""

from __future__ import annotations

import numpy as np
import torch

from analysis.activations import sae_reader, unit_activations
from analysis.sae.load import load_sae
from analysis.sae.model import SAE
from tests.helpers import random_transcoder
from tests.sae_helpers import np_encode

K = 4


def _weights(sae: SAE) -> dict:
    return {"W_enc": sae.W_enc.double().numpy(), "b_enc": sae.b_enc.double().numpy()}


def _normed_mlp_input(model, ids: torch.Tensor, layer: int) -> np.ndarray:
    """The output of the block's pre-MLP norm module (captured with a plain torch hook on the norm itself)."""
    blocks = model.model.layers if hasattr(model, "model") else model.transformer.h  # llama-like or GPT-2
    block = blocks[layer]
    norm = next(getattr(block, n) for n in ("pre_feedforward_layernorm", "post_attention_layernorm", "ln_2")
                if hasattr(block, n))
    got = {}
    handle = norm.register_forward_hook(lambda _m, _a, out: got.setdefault("x", out))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        handle.remove()
    return got["x"][0].double().numpy()


def test_embedded_smollm2_transcoder_features_equal_numpy_on_the_normed_mlp_input(embedded_smollm2):
    subject = embedded_smollm2
    tc = random_transcoder(576, 96, K, layer=5, seed=3)
    ids = subject.tokenizer(["Transcoders read what the MLP reads and write what it writes, said the paper."],
                            return_tensors="pt").input_ids
    x = _normed_mlp_input(subject.model, ids, 5)
    feats = unit_activations(subject, ids, None, [sae_reader(tc)])[(tc.source, 5)][0].double().numpy()
    ref = np_encode(x, _weights(tc), "topk", k=K)
    np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-4)
    assert ((ref > 0).sum(1) > 0).all()


def test_harvested_transcoder_records_equal_an_independent_encode(transcoder_db):
    from analysis.jobs.reads import unit_records
    from analysis.models import load_model
    from cache.store import open_store

    db, model, folder, _tc = transcoder_db
    tc = load_sae(str(folder))
    with open_store(db, read_only=True) as store:
        d = store.catalog.dictionary(tc.source)
        assert d is not None and d.kind == "transcoder" and d.site == "mlp_input"
    subject = load_model(model)
    checked = 0
    records = unit_records(db, model, 1, list(range(8)), source=tc.source)
    for unit, rec in records.items():
        assert rec.hook_point == f"blocks.1.ln2.hook_normalized -> {tc.source}"
        for r in rec.most_positive_activation_records[:2]:
            enc = subject.encode([r.token_ids])
            x = _normed_mlp_input(subject.model, enc.input_ids, 1)[enc.n_prefix:]
            ref = np_encode(x, _weights(tc), "topk", k=tc.k)[:, unit]
            np.testing.assert_allclose(r.activations, ref, rtol=1e-3, atol=1e-3)  # records hold float16
            checked += 1
    assert checked >= 8 and any(max(r.activations) > 0 for rec in records.values()
                                for r in rec.most_positive_activation_records)


def test_the_cli_takes_a_transcoder_by_its_name(transcoder_db, tmp_path, capsys):
    from analysis.__main__ import main

    db, model, _folder, _tc = transcoder_db
    assert main(["export", "--db", str(db), "--model", model, "--layer", "1", "--neuron", "2",
                 "--source", "tiny-tc", "--compact"]) == 0
    import json

    record = json.loads(capsys.readouterr().out)
    assert record["hook_point"].startswith("blocks.1.ln2.hook_normalized -> sae:tiny-tc@")


def test_a_model_whose_mlp_is_not_mapped_is_refused_and_nothing_is_written(transcoder_db, tmp_path, capsys):
    """Phi-3 fuses its MLP's gate and up projections: no transcoder is trained on it or harvested from it."""
    import json

    from analysis.__main__ import main

    phi = tmp_path / "tiny-phi3"
    phi.mkdir()
    (phi / "config.json").write_text(json.dumps({
        "model_type": "phi3", "architectures": ["Phi3ForCausalLM"], "hidden_size": 32, "intermediate_size": 64,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 300}))
    out = tmp_path / "tc-out"
    assert main(["sae", "train", "--kind", "transcoder", "--model", str(phi), "--layer", "0", "--width", "8",
                 "--k", "2", "--out", str(out)]) == 2
    assert "fuses gate and up" in capsys.readouterr().err and not out.exists()
    db = tmp_path / "phi.duckdb"
    _db, _model, folder, _tc = transcoder_db
    assert main(["harvest", "--model", str(phi), "--db", str(db), "--sae", str(folder), "--quiet"]) == 2
    assert "transcoder's sites are mapped" in capsys.readouterr().err and not db.exists()


def test_a_transcoder_of_another_width_or_with_a_missing_tensor_is_refused_by_the_cli(transcoder_db, tmp_path,
                                                                                       capsys):
    from analysis.__main__ import main
    from analysis.sae.saelens import save_sae

    db0, model, folder, _tc = transcoder_db
    narrow = save_sae(random_transcoder(16, 24, K, layer=1), tmp_path / "narrow-tc")
    broken = save_sae(random_transcoder(32, 24, K, layer=1), tmp_path / "broken-tc")
    from safetensors.torch import load_file, save_file

    weights = load_file(str(broken / "sae_weights.safetensors"))
    del weights["b_dec"]
    save_file(weights, str(broken / "sae_weights.safetensors"))
    for spec, message in ((narrow, "reads 16-dimensional vectors, but mlp_input"), (broken, "lacks b_dec")):
        db = tmp_path / f"{spec.name}.duckdb"
        assert main(["harvest", "--model", model, "--db", str(db), "--sae", str(spec), "--quiet"]) == 2
        assert message in capsys.readouterr().err and not db.exists()


def test_ablating_a_transcoder_feature_subtracts_its_decoder_row_at_the_mlp_output(transcoder_db):
    """``ablate`` (zero) of a feature = the model with activation x decoder row taken off the MLP's output, the
    activation encoded by hand from the norm's output."""
    from analysis.causal import Edit, ablate
    from analysis.models import load_model
    from analysis.types import UnitId

    _db, model, _folder, tc = transcoder_db
    subject = load_model(model)
    ids = subject.tokenize("Paris is the capital of France and Rome is the capital of Italy.")
    full = torch.tensor([subject.bos_prefix + ids])
    x = torch.from_numpy(_normed_mlp_input(subject.model, full, 1)).float()
    acts = np_encode(x.double().numpy(), _weights(tc), "topk", k=tc.k)
    feature = int(np.argmax((acts > 0).sum(0)))  # the feature that fires most often
    a = torch.from_numpy(acts[:, feature]).float()
    assert (a > 0).sum() >= 2
    row = tc.W_dec[feature]

    def hand(delta):  # a plain forward hook on the MLP module of GPT-2's block 1
        handle = subject.model.transformer.h[1].mlp.register_forward_hook(lambda _m, _i, out: out + delta[None])
        try:
            with torch.no_grad():
                return torch.log_softmax(subject.model(input_ids=full).logits[0].float(), -1)
        finally:
            handle.remove()

    expected = hand(-a[:, None] * row[None, :])
    got = ablate(subject, ids, UnitId(tc.source, 1, feature), Edit(0.0, 0.0), tc)
    p = len(subject.bos_prefix)
    nxt = torch.tensor(ids[1:])
    want = expected[p:-1].gather(-1, nxt[:, None])[:, 0]
    np.testing.assert_allclose(got.ablated_logprob, want.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got.activations, a[p:].numpy(), rtol=1e-4, atol=1e-4)
    assert float(np.abs(np.array(got.delta)).max()) > 1e-3  # the ablation does something
