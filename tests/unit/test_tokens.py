"""Readable tokens: characters a byte-level tokenizer splits over tokens show whole, in records and pages."""

from __future__ import annotations

import json
import re

import pytest

from analysis.tokens import joined_runs, utf8_runs, vocab_bytes
from analysis.types import MLP, TokenActivations, UnitId

SPLIT_TEXT = "Paris سلام עברית 😀🎉 café"


@pytest.fixture(scope="module")
def tokenizer():
    from helpers import tiny_tokenizer

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


def test_vocab_bytes_round_trips_every_text(tokenizer, embedded_smollm2):
    for tok in (tokenizer, embedded_smollm2.tokenizer):
        table = vocab_bytes(tok)
        for text in (SPLIT_TEXT, "naïve 中文 – “quotes” \n\t<b>x</b>"):
            ids = tok(text, add_special_tokens=False).input_ids
            assert b"".join(table[i] for i in ids).decode("utf-8") == text


def test_heatmap_merges_a_run_into_one_cell_with_every_value():
    from viewer.components.heatmap import records_html

    rec = TokenActivations(["<b>", "\ufffd", "\ufffd", "!"], [0.1, 0.5, -0.25, 2.0],
                           runs=((0, 1, "<b>"), (1, 3, "é"), (3, 4, "!")))
    body = records_html([rec], 2.0)
    [cell] = re.findall(r'<span class="tok joined" title="([^"]*)"[^>]*>([^<]*)</span>', body)
    assert cell[1] == "é" and "+0.5000, -0.2500" in cell[0] and "2 tokens" in cell[0]
    assert "\ufffd" not in body and "&lt;b&gt;" in body and body.count('class="tok') == 3


def test_records_and_pages_show_split_characters_whole(tiny_folders, tmp_path, monkeypatch, capsys):
    from analysis.__main__ import main
    from cache.store import open_store
    from helpers import TINY_TEXT
    from test_viewer import _all_html, _page

    corpus = tmp_path / "docs.jsonl"
    with open(corpus, "w") as f:
        for i in range(12):
            f.write(json.dumps({"title": f"d{i}", "text": f"{TINY_TEXT[i % 4]} {SPLIT_TEXT} {TINY_TEXT[(i + 1) % 4]}"})
                    + "\n")
    db, model = tmp_path / "u.duckdb", str(tiny_folders["gpt2"])
    assert main(["harvest", "--model", model, "--corpus", str(corpus), "--db", str(db), "--layers", "0",
                 "--seq-len", "32", "--quiet"]) == 0
    with open_store(db, read_only=True) as s:
        rec = s.records.unit_record(s.runs.find(model, 0), UnitId(MLP, 0, 0))
    recs = rec.most_positive_activation_records + rec.random_sample
    assert any(r.runs for r in recs)
    for r in recs:
        if r.runs:
            assert len(r.tokens) == len(r.activations) == r.runs[-1][1]  # still one value per token
            assert not any("\ufffd" in t for _s, _e, t in r.runs)
    at = _page("neuron", db, monkeypatch, model=model, layer=0, neuron=0)
    assert not at.exception and 'class="tok joined"' in _all_html(at) and "😀" in _all_html(at)
    # a cache from before tokens' bytes were kept gets them from `migrate` (the model's tokenizer still loads)
    import duckdb

    from cache.db import writer_intent

    with writer_intent(db.resolve()):  # the page's shared read-only connection lets go of the file first
        con = duckdb.connect(str(db))
        con.execute("UPDATE vocab SET bytes = NULL")
        con.close()
    with open_store(db, read_only=True) as s:
        assert not any(r.runs for r in s.records.unit_record(s.runs.find(model, 0), UnitId(MLP, 0, 0)).random_sample)
    assert main(["migrate", "--db", str(db)]) == 0
    assert "tokens' bytes added" in capsys.readouterr().err
    with open_store(db, read_only=True) as s:
        again = s.records.unit_record(s.runs.find(model, 0), UnitId(MLP, 0, 0))
    assert [r.runs for r in again.random_sample] == [r.runs for r in rec.random_sample]
