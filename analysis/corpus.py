"""Corpora: documents in, fixed token windows out.

Embedded corpora come from files inside the ``gensim==4.4.0`` wheel, which ``make setup`` fetches into
``<data>/wheels/`` (no gensim install); the first use extracts and cleans them into ``<data>/corpora/``.
Any plain text file or folder, JSONL file (``text`` field, optional ``title``) or parquet file (``text``
column) works too.
"""

from __future__ import annotations

import bz2
import hashlib
import json
import random
import re
import xml.etree.ElementTree as ET
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from analysis.config import data_dir
from analysis.types import CorpusInfo, Document, UserError, Window

GENSIM_WHEEL_GLOB = "gensim-4.4.0-*.whl"
ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
LEE_MEMBER = "gensim/test/test_data/lee_background.cor"

EMBEDDED_CORPORA = {
    "enwiki-sample": "English Wikipedia sample from the gensim 4.4.0 wheel: ~106 articles, markup stripped",
    "lee-background": "Lee news corpus (lee_background.cor) from the gensim 4.4.0 wheel: 300 short news articles",
    "reference-en": "~14 M words of English prose from package registries (dictionaries, news, speeches, books, "
                    "the Brown corpus, Wikipedia intros; see analysis/reference_corpus.py), the NPMI reference of topics",
}


@dataclass(frozen=True)
class Corpus:
    info: CorpusInfo
    documents: list[Document]


def _wheel_member(member: str) -> bytes:
    wheels = sorted((data_dir() / "wheels").glob(GENSIM_WHEEL_GLOB))
    if not wheels:
        raise UserError(
            f"the embedded corpora need the gensim 4.4.0 wheel in {data_dir() / 'wheels'}; run `make setup` "
            "(it runs: pip download --no-deps gensim==4.4.0 -d data/wheels)"
        )
    with zipfile.ZipFile(wheels[0]) as zf:
        return zf.read(member)


def strip_wikitext(wikitext: str) -> str:
    """Plain prose from wikitext: templates, tables, refs, files and categories removed; links kept as text."""
    import mwparserfromhell

    code = mwparserfromhell.parse(wikitext)
    for node in code.filter_wikilinks(recursive=False):
        target = str(node.title).strip().lower()
        if target.startswith(("file:", "image:", "category:")) or re.match(r"^[a-z\-]{2,12}:", target):
            try:
                code.remove(node)
            except ValueError:
                pass
    text = code.strip_code(normalize=True, collapse=True)
    lines = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("{|", "|", "!")):
            continue
        line = re.sub(r"\b\d+px\|", "", line)  # image sizes left over from galleries
        # malformed markup the parser leaves as text (an unclosed <ref> or template): drop to its end
        line = re.sub(r"<ref[^>]*>.*?(</ref>|$)", "", line)
        line = re.sub(r"\{\{.*?(\}\}|$)", "", line).strip()
        if not line:
            continue
        line = re.sub(r"\s+", " ", line)
        lines.append(line)
    return "\n".join(lines)


def parse_wiki_dump(xml_bytes: bytes) -> list[Document]:
    """Articles (namespace 0) of a MediaWiki XML dump, redirects dropped, markup stripped."""
    docs: list[Document] = []
    for _event, elem in ET.iterparse(_BytesReader(xml_bytes), events=("end",)):
        if not elem.tag.endswith("}page") and elem.tag != "page":
            continue
        ns = _child_text(elem, "ns")
        title = _child_text(elem, "title") or ""
        redirect = any(child.tag.endswith("redirect") for child in elem)
        text = ""
        for rev in elem.iter():
            if rev.tag.endswith("}text") or rev.tag == "text":
                text = rev.text or ""
        elem.clear()
        if redirect or (ns not in (None, "0")) or text.lstrip().upper().startswith("#REDIRECT"):
            continue
        clean = strip_wikitext(text)
        if len(clean) < 200:
            continue
        docs.append(Document(doc_id=len(docs), title=title, text=clean))
    return docs


class _BytesReader:
    def __init__(self, data: bytes):
        import io

        self._buf = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._buf.read(n)


def _child_text(elem: ET.Element, name: str) -> str | None:
    for child in elem:
        if child.tag.endswith("}" + name) or child.tag == name:
            return child.text
    return None


def _embedded_documents(name: str) -> list[Document]:
    if name == "reference-en":
        from analysis import reference_corpus

        return reference_corpus.documents()
    cached = data_dir() / "corpora" / f"{name}.jsonl"
    if cached.exists():
        return _read_jsonl(cached)
    if name == "enwiki-sample":
        docs = parse_wiki_dump(bz2.decompress(_wheel_member(ENWIKI_MEMBER)))
    else:
        lines = _wheel_member(LEE_MEMBER).decode("utf-8", errors="replace").splitlines()
        docs = [Document(i, f"lee {i}", line.strip()) for i, line in enumerate(lines) if line.strip()]
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps({"title": d.title, "text": d.text}, ensure_ascii=False) + "\n")
    tmp.rename(cached)
    return docs


def _read_jsonl(path: Path) -> list[Document]:
    docs = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{path}:{lineno} is not valid JSON: {exc}") from None
            if not isinstance(row, dict) or "text" not in row:
                raise UserError(f"{path}:{lineno} has no 'text' field")
            docs.append(Document(len(docs), str(row.get("title", f"{path.name}:{lineno}")), str(row["text"])))
    return docs


def _read_files(path: Path) -> list[Document]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in {".txt", ".md", ".text"})
        if not files:
            raise UserError(f"folder {path} holds no .txt or .md files")
        docs: list[Document] = []
        for p in files:
            docs.extend(_read_files(p))
        return [Document(i, d.title, d.text) for i, d in enumerate(docs)]
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        if "text" not in table.column_names:
            raise UserError(f"parquet file {path} has no 'text' column (columns: {', '.join(table.column_names)})")
        texts = table.column("text").to_pylist()
        titles = table.column("title").to_pylist() if "title" in table.column_names else [None] * len(texts)
        return [Document(i, str(t or f"{path.name}:{i}"), str(x)) for i, (t, x) in enumerate(zip(titles, texts)) if x]
    text = path.read_text(encoding="utf-8", errors="replace")
    return [Document(0, path.name, text)]


def embedded_version(name: str) -> str | None:
    """What changes when an embedded corpus' cleaned text would change (None for a path or a fixed corpus): keys
    derived data such as NPMI statistics, so a new cleaning is counted again."""
    if name == "reference-en":
        from analysis import reference_corpus

        return f"format {reference_corpus.FORMAT}"
    return None


def titles_of(name: str) -> frozenset[str]:
    """The case-folded titles of a corpus' documents (empty when it does not load here, e.g. no gensim wheel)."""
    try:
        return frozenset(d.title.casefold() for d in load_corpus(name).documents)
    except UserError:
        return frozenset()


def load_corpus(name: str) -> Corpus:
    """A corpus by embedded name or path. Raises UserError for unknown names and corpora without text."""
    if name in EMBEDDED_CORPORA:
        docs = _embedded_documents(name)
        source = "embedded"
        corpus_name = name
    else:
        path = Path(name).expanduser()
        if not path.exists():
            raise UserError(f"unknown corpus {name!r}: not an embedded corpus ({', '.join(EMBEDDED_CORPORA)}) "
                            "and no such file or folder")
        docs = _read_files(path)
        source = str(path.resolve())
        corpus_name = path.name
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        raise UserError(f"corpus {name!r} has no text")
    digest = hashlib.sha256()
    for d in docs:
        digest.update(d.title.encode() + b"\0" + d.text.encode() + b"\0")
    text_hash = digest.hexdigest()
    corpus_id = corpus_name if source == "embedded" else f"{corpus_name}@{text_hash[:12]}"
    info = CorpusInfo(corpus_id=corpus_id, name=corpus_name, source=source, text_hash=text_hash,
                      n_docs=len(docs), n_chars=sum(len(d.text) for d in docs))
    return Corpus(info=info, documents=docs)


def make_windows(documents: Iterable[Document], tokenizer, seq_len: int, min_len: int | None = None) -> Iterator[Window]:
    """Cut every document's tokens (no special tokens) into consecutive windows of ``seq_len``.

    A document's last window is kept if it has at least ``min_len`` tokens (default seq_len // 4); it is then
    shorter than seq_len and gets padded (and masked) at run time.
    """
    if seq_len < 1:
        raise UserError("--seq-len must be at least 1")
    min_len = max(1, seq_len // 4) if min_len is None else min_len
    window_id = 0
    for doc in documents:
        ids = tokenizer(doc.text, add_special_tokens=False).input_ids
        for offset in range(0, len(ids), seq_len):
            chunk = ids[offset : offset + seq_len]
            if len(chunk) < min_len:
                continue
            yield Window(window_id=window_id, doc_id=doc.doc_id, offset=offset, token_ids=tuple(chunk))
            window_id += 1


def select_windows(windows: list[Window], max_tokens: int | None, seed: int) -> list[Window]:
    """A seeded random subset of windows holding at most ``max_tokens`` tokens, in corpus order.

    Random rather than the first N so that a partial harvest covers every document.
    """
    if max_tokens is not None and max_tokens <= 0:
        raise UserError("--max-tokens must be positive")
    if max_tokens is None or sum(len(w.token_ids) for w in windows) <= max_tokens:
        return list(windows)
    order = list(range(len(windows)))
    random.Random(seed).shuffle(order)
    chosen, total = [], 0
    for i in order:
        n = len(windows[i].token_ids)
        if total + n > max_tokens:
            continue
        chosen.append(i)
        total += n
        if total >= max_tokens:
            break
    return [windows[i] for i in sorted(chosen)]


def windows_hash(windows: list[Window]) -> str:
    digest = hashlib.sha256()
    for w in windows:
        digest.update(f"{w.window_id}:{w.doc_id}:{w.offset}:".encode())
        digest.update(",".join(map(str, w.token_ids)).encode())
    return digest.hexdigest()
