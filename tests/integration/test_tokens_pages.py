"""Readable tokens for real: the embedded model's vocabulary round-trips, and a harvest's records and pages show
characters split over tokens whole (and `migrate` adds the bytes an older cache lacks)."""

from __future__ import annotations

import json

from analysis.tokens import vocab_bytes
from analysis.types import MLP, UnitId
from tests.helpers import SPLIT_TEXT, TINY_TEXT, all_html, open_page, tiny_tokenizer


def test_vocab_bytes_round_trips_every_text(embedded_smollm2):
    for tok in (tiny_tokenizer(), embedded_smollm2.tokenizer):
        table = vocab_bytes(tok)
        for text in (SPLIT_TEXT, "naïve 中文 – “quotes” \n\t<b>x</b>"):
            ids = tok(text, add_special_tokens=False).input_ids
            assert b"".join(table[i] for i in ids).decode("utf-8") == text


def test_records_and_pages_show_split_characters_whole(tiny_folders, tmp_path, monkeypatch, capsys):
    from analysis.__main__ import main
    from cache.store import open_store

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
    at = open_page("neuron", db, monkeypatch, model=model, layer=0, neuron=0)
    assert not at.exception and 'class="tok joined"' in all_html(at) and "😀" in all_html(at)
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
