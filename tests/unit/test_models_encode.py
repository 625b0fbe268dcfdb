"""SubjectModel's BOS prefix, padding token, context length and ``encode`` on the tiny random models: the
layout of an encoded batch, and real tokens' activations in it equal to each sequence's run alone."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from analysis.activations import mlp_activations
from analysis.models import load_model
from tests.helpers import KINDS, tiny_model_folder


@pytest.fixture(scope="module")
def subjects(tiny_folders, tmp_path_factory) -> dict[str, object]:
    """The four tiny families (no BOS), plus a LLaMA and a Gemma whose tokenizers prepend BOS."""
    out = {kind: load_model(str(folder)) for kind, folder in tiny_folders.items()}
    root = tmp_path_factory.mktemp("bos_models")
    for kind in ("llama", "gemma"):
        out[f"{kind}+bos"] = load_model(str(tiny_model_folder(root / kind, kind, bos=True)))
    return out


ALL = KINDS + ["llama+bos", "gemma+bos"]
LENGTHS = [9, 1, 17, 4]


def _sequences(subject, seed: int = 0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, len(subject.tokenizer), (n,), generator=g).tolist() for n in LENGTHS]


def test_the_bos_fixtures_prepend_bos(subjects):
    assert [k for k in ALL if subjects[k].info.prepend_bos] == ["llama+bos", "gemma+bos"]


@pytest.mark.parametrize("kind", ALL)
def test_encode_layout(subjects, kind):
    subject = subjects[kind]
    tok = subject.tokenizer
    seqs = _sequences(subject)
    bos = tok.bos_token_id
    assert subject.bos_prefix == ([bos] if subject.info.prepend_bos else [])
    assert subject.pad_id == tok.pad_token_id
    for length in (None, 20):
        enc = subject.encode(seqs, length=length)
        T = max(LENGTHS) if length is None else length
        n = 1 if subject.info.prepend_bos else 0
        assert enc.n_prefix == n
        assert enc.input_ids.shape == enc.attention_mask.shape == (len(seqs), n + T)
        assert enc.real.shape == (len(seqs), T) and enc.real.dtype == torch.bool
        for i, s in enumerate(seqs):
            row = enc.input_ids[i].tolist()
            assert row == [bos] * n + s + [tok.pad_token_id] * (T - len(s))
            assert enc.attention_mask[i].tolist() == [1] * (n + len(s)) + [0] * (T - len(s))
            assert enc.real[i].tolist() == [True] * len(s) + [False] * (T - len(s))
    no_bos = subject.encode(seqs, bos=False)
    assert no_bos.n_prefix == 0 and torch.equal(no_bos.input_ids, subject.encode(seqs).input_ids[:, n:])
    with pytest.raises(dataclasses.FrozenInstanceError):
        enc.n_prefix = 3


def test_pad_id_falls_back_to_eos_then_0(subjects):
    subject = subjects["llama"]
    tok = subject.tokenizer
    assert tok.pad_token_id is not None and tok.eos_token_id is not None and tok.pad_token_id != tok.eos_token_id

    class Tokenizer:
        def __init__(self, pad, eos):
            self.pad_token_id, self.eos_token_id = pad, eos

    def pad_id(pad, eos):
        return dataclasses.replace(subject, tokenizer=Tokenizer(pad, eos)).pad_id

    assert pad_id(7, 5) == 7
    assert pad_id(0, 5) == 0
    assert pad_id(None, 5) == 5
    assert pad_id(None, None) == 0


@pytest.mark.parametrize("kind", ALL)
def test_context_length_reads_the_config(subjects, kind):
    assert subjects[kind].context_length == 128  # tests/helpers.py: n_positions / max_position_embeddings


def test_context_length_is_none_when_the_config_says_nothing(subjects):
    class Model:
        config = object()

    assert dataclasses.replace(subjects["llama"], model=Model()).context_length is None


def test_tokenize_adds_no_special_tokens(subjects):
    subject = subjects["llama+bos"]
    text = "Paris is the capital of France."
    assert subject.tokenizer(text).input_ids[0] == subject.tokenizer.bos_token_id
    assert subject.tokenize(text) == subject.tokenizer(text).input_ids[1:]


@pytest.mark.parametrize("kind", ALL)
def test_real_tokens_of_an_encoded_batch_equal_each_sequence_run_alone(subjects, kind):
    subject = subjects[kind]
    layers = [0, 2]
    seqs = _sequences(subject, seed=1)
    enc = subject.encode(seqs, length=24)
    batched = mlp_activations(subject, enc.input_ids, enc.attention_mask, layers)
    bos = [subject.tokenizer.bos_token_id] if kind.endswith("+bos") else []
    for i, s in enumerate(seqs):
        alone = mlp_activations(subject, torch.tensor([bos + s]), None, layers)
        for layer in layers:
            got = batched[layer][i, enc.n_prefix :][enc.real[i]]
            want = alone[layer][0, len(bos) :]
            assert got.shape == want.shape == (len(s), subject.info.d_mlp)
            # the README's tolerance: 1e-5, relative above magnitude 1 (a padded batch takes another attention
            # kernel; on some CPUs the tiny LLaMA's activations of ~6 differ by 1.5e-5 absolute)
            diff = ((got - want).abs() / want.abs().clamp(min=1.0)).max().item()
            assert diff <= 1e-5, (kind, i, layer, diff)
