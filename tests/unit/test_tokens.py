"""Readable tokens: characters a byte-level tokenizer splits over tokens show whole, in records and pages."""

from __future__ import annotations

import re

import pytest

from analysis.tokens import joined_runs, utf8_runs, vocab_bytes
from analysis.types import TokenActivations
from tests.helpers import SPLIT_TEXT


@pytest.fixture(scope="module")
def tokenizer():
    from tests.helpers import tiny_tokenizer

    return tiny_tokenizer()  # trained on ASCII text: every other character is split into byte tokens


def test_runs_join_exactly_the_split_characters(tokenizer):
    ids = tokenizer(SPLIT_TEXT, add_special_tokens=False).input_ids
    alone = tokenizer.batch_decode([[i] for i in ids])
    assert sum("\ufffd" in t for t in alone) > 10  # what a page showed before: a row of U+FFFD
    pieces = [vocab_bytes(tokenizer)[i] for i in ids]
    runs = utf8_runs(pieces)
    assert "".join(t for _s, _e, t in runs) == SPLIT_TEXT
    assert [s for s, _e, _t in runs] == sorted({s for s, _e, _t in runs}) and runs[-1][1] == len(ids)
    assert all(a == b for (_s, a, _t), (b, _e, _u) in zip(runs, runs[1:]))  # contiguous, covering every token
    for s, e, text in runs:
        assert "\ufffd" not in text
        if e - s > 1:  # joined only where the tokens do not decode alone: each shorter prefix fails
            for k in range(s + 1, e):
                with pytest.raises(UnicodeDecodeError):
                    b"".join(pieces[s:k]).decode("utf-8")
    assert {t.strip() for _s, e_, t in runs if e_ - _s > 1} >= {"😀", "🎉", "é"}
    assert joined_runs([b"ab", b" c"]) == ()  # nothing to join: records keep their plain tokens


def test_a_window_cut_inside_a_character_keeps_its_bytes_visible():
    runs = utf8_runs([b"\x98\x80", b" ok", b"\xf0\x9f"])  # the tail of one emoji, then the head of another
    assert [t for _s, _e, t in runs] == ["\\x98\\x80", " ok", "\\xf0\\x9f"]


def test_heatmap_merges_a_run_into_one_cell_with_every_value():
    from viewer.components.heatmap import records_html

    rec = TokenActivations(["<b>", "\ufffd", "\ufffd", "!"], [0.1, 0.5, -0.25, 2.0],
                           runs=((0, 1, "<b>"), (1, 3, "é"), (3, 4, "!")))
    body = records_html([rec], 2.0)
    [cell] = re.findall(r'<span class="tok joined" title="([^"]*)"[^>]*>([^<]*)</span>', body)
    assert cell[1] == "é" and "+0.5000, -0.2500" in cell[0] and "2 tokens" in cell[0]
    assert "\ufffd" not in body and "&lt;b&gt;" in body and body.count('class="tok') == 3
