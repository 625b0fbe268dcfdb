"""Explain -> simulate -> score: simulators against independent computations, a planted token neuron, prompts and
replies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from analysis.evaluate import score_simulation
from analysis.models import load_model
from analysis.prompts import explain_prompt, format_tokens
from analysis.simulate import LocalAllAtOnceSimulator, TokenLookupSimulator, parse_activation_list
from tests.helpers import Rec


def test_local_simulator_equals_plain_forward_expectation(tiny_folders):
    """Batched, padded, lm_head restricted to the value rows == the full model run on each prompt alone."""
    subject = load_model(str(tiny_folders["llama"]))
    sim = LocalAllAtOnceSimulator(subject, batch_size=3)
    rng = np.random.default_rng(0)
    recs = [Rec(["x"] * n, [int(t) for t in rng.integers(40, 250, size=n)], [0.0] * n) for n in (5, 9, 3, 7)]
    got = sim.simulate("some explanation", recs).simulated
    values = np.array(sim.values) * sim.scale
    for r, g in zip(recs, got):
        ids, slots = sim._prompt("some explanation", r)
        for k, s in enumerate(slots):  # the slot is the TAB right after the record's token, before 'unknown'
            assert ids[s - 1] == r.token_ids[k] and ids[s + 1: s + 1 + len(sim.unknown)] == sim.unknown
        with torch.no_grad():
            logits = subject.model(input_ids=torch.tensor([ids])).logits[0].double()
        p = torch.softmax(logits[slots][:, sim.value_ids], dim=-1).numpy()
        np.testing.assert_allclose(g, p @ values, rtol=1e-4, atol=1e-4)


def test_token_lookup_recovers_a_planted_token_neuron():
    table = {7: 4.0, 9: 1.0}
    recs = [Rec(list("abcd"), [7, 1, 9, 7], [4.0, 0.0, 1.0, 4.0]), Rec(list("ab"), [2, 9], [0.0, 1.0])]
    sim = TokenLookupSimulator(table, default=0.0, max_activation=4.0)
    scored = score_simulation(sim, "anything", recs, 4.0, "top-and-random")
    assert scored.score == pytest.approx(1.0) and scored.rsquared == pytest.approx(1.0)
    assert scored.simulated[0] == [10.0, 0.0, 2.5, 10.0]


def test_prompt_format():
    recs = [Rec([" Paris", " is"], [1, 2], [2.0, 0.0])]
    text = explain_prompt(recs, 2.0)
    assert text.startswith("We're studying neurons")
    assert " Paris\t10\n is\t0\n<end>" in text
    assert text.endswith("the main thing this neuron does is find")
    assert format_tokens(["a", "b"], None) == "<start>\na\tunknown\nb\tunknown\n<end>\n"


@pytest.mark.parametrize("reply, ok", [
    ("[0, 3, 10]", True), ('Sure! {"activations": [0, 3, 10]}', True), ("```json\n[0,3,10]\n```", True),
    ("[0, 3]", False), ("no numbers here", False), ("[0, 'x', 1]", False), ("[0, 3, 10", False),
])
def test_api_reply_parsing(reply, ok):
    values, reason = parse_activation_list(reply, 3)
    assert (values is not None) == ok
    if ok:
        assert values == [0.0, 3.0, 10.0]
    else:
        assert reason


def test_degenerate_explanations_are_flagged():
    from analysis.prompts import FEW_SHOT, degenerate_reason

    assert degenerate_reason("") == degenerate_reason("  .  ") == "empty"
    for ex in FEW_SHOT:  # verbatim, reordered, re-cased, with a word dropped
        words = ex.explanation.replace("'", "").split()
        for text in (ex.explanation, " ".join(reversed(words)).upper() + ".", " ".join(words[:-1] + words[-1:])):
            assert degenerate_reason(text).startswith("copies a few-shot explanation"), text
    for text in ("the main thing this neuron does is find", "neurons in a neural network",
                 "Explanation of neuron 3 behavior"):
        assert degenerate_reason(text) == "restates the prompt", text
    for text in ("years and dates", "water", "the tokens ' Paris' and ' France'", "rivers in Africa and their deltas",
                 "closing brackets after a neuron name"):
        assert degenerate_reason(text) is None, text
