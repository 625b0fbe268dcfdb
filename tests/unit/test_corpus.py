"""Corpora: wiki dumps cleaned, files of every accepted kind read, windows traceable to their document."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from analysis.corpus import load_corpus, make_windows, parse_wiki_dump, select_windows
from analysis.types import Document, UserError
from tests.helpers import tiny_tokenizer

WIKI = """<mediawiki xmlns="http://www.mediawiki.org/xml/export-0.10/">
<page><title>Paris</title><ns>0</ns><revision><text>'''Paris''' is the [[capital city|capital]] of [[France]].
{{Infobox city|population=2,100,000}}
It has many museums.&lt;ref&gt;A source&lt;/ref&gt; [[File:Eiffel.jpg|thumb|The tower]]
== History ==
The city was founded in the 3rd century BC by a Celtic people called the Parisii, who gave the city its name.
By the 12th century, Paris was the largest city in the western world, a prosperous trading centre.
[[Category:Capitals in Europe]]</text></revision></page>
<page><title>Lutetia</title><ns>0</ns><redirect title="Paris" /><revision><text>#REDIRECT [[Paris]]</text></revision></page>
<page><title>Talk:Paris</title><ns>1</ns><revision><text>A talk page about Paris that is long enough to count as prose, but it is not an article and must be dropped from the corpus anyway.</text></revision></page>
</mediawiki>"""


def test_wiki_dump_keeps_articles_as_plain_prose():
    docs = parse_wiki_dump(WIKI.encode())
    assert [d.title for d in docs] == ["Paris"]
    text = docs[0].text
    assert "Paris is the capital of France." in text
    assert "History" in text and "Parisii" in text
    for junk in ("{{", "[[", "<ref", "Infobox", "Category:", "File:", "thumb", "'''"):
        assert junk not in text, junk


def test_text_jsonl_parquet_and_folder_corpora(tmp_path):
    (tmp_path / "a.txt").write_text("first document text")
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "x.txt").write_text("one")
    (folder / "y.md").write_text("two")
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps({"text": "alpha", "title": "A"}) + "\n\n" + json.dumps({"text": "beta"}) + "\n")
    parquet = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": ["gamma", "delta", ""]}), parquet)
    assert [d.text for d in load_corpus(str(tmp_path / "a.txt")).documents] == ["first document text"]
    assert [d.text for d in load_corpus(str(folder)).documents] == ["one", "two"]
    c = load_corpus(str(jsonl))
    assert [d.text for d in c.documents] == ["alpha", "beta"] and c.documents[0].title == "A"
    assert c.info.corpus_id.startswith("c.jsonl@") and c.info.n_docs == 2
    assert [d.text for d in load_corpus(str(parquet)).documents] == ["gamma", "delta"]


def test_bad_corpora_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown corpus"):
        load_corpus("no-such-corpus")
    empty = tmp_path / "empty.txt"
    empty.write_text("   \n")
    with pytest.raises(UserError, match="has no text"):
        load_corpus(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "no text field"}\n')
    with pytest.raises(UserError, match="no 'text' field"):
        load_corpus(str(bad))
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "p.parquet")
    with pytest.raises(UserError, match="no 'text' column"):
        load_corpus(str(tmp_path / "p.parquet"))


def test_windows_trace_back_to_their_document():
    tok = tiny_tokenizer()
    docs = [Document(0, "a", "The quick brown fox jumps over the lazy dog. " * 9),
            Document(1, "b", "Paris is the capital of France. " * 5)]
    windows = list(make_windows(docs, tok, seq_len=16))
    assert [w.window_id for w in windows] == list(range(len(windows)))
    for w in windows:
        ids = tok(docs[w.doc_id].text, add_special_tokens=False).input_ids
        assert list(w.token_ids) == ids[w.offset : w.offset + 16]
        assert 4 <= len(w.token_ids) <= 16
    chosen = select_windows(windows, max_tokens=60, seed=1)
    assert sum(len(w.token_ids) for w in chosen) <= 60
    assert chosen == sorted(chosen, key=lambda w: w.window_id)
    assert select_windows(windows, max_tokens=60, seed=1) == chosen  # seeded
    with pytest.raises(UserError):
        select_windows(windows, max_tokens=0, seed=1)


def test_embedded_wikipedia_sample():
    c = load_corpus("enwiki-sample")
    assert c.info.n_docs > 100 and c.info.n_chars > 3_000_000
    titles = [d.title for d in c.documents]
    assert "Anarchism" in titles
    assert not any("#REDIRECT" in d.text[:20].upper() for d in c.documents)
    assert all("{{" not in d.text for d in c.documents)
