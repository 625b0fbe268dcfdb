"""Word co-occurrence statistics of a reference corpus, and NPMI between words.

Counting follows the boolean sliding window of Palmetto (Röder et al. 2015), which the reference code uses
(its ``get_total_windows``): a document of n words has max(1, n - w + 1) windows of w consecutive words
(a document shorter than w is one window);

- ``n_windows`` = the number of windows in the corpus;
- ``window_counts[a]`` = the number of windows that contain word a at least once;
- ``pair_counts[a, b]`` = the number of windows that contain both a and b;
- p(a) = window_counts[a] / n_windows, p(a, b) = pair_counts[a, b] / n_windows,
  NPMI(a, b) = log(p(a, b) / (p(a) p(b))) / -log p(a, b).

Words are the lower-cased alphabetic runs of the text (``analysis.words.WORD_RE``); windows run over all of them, but only
vocabulary words (at least ``min_count`` occurrences in the corpus) are counted. Pairs whose window count is
below ``min_pair_count`` are treated as never seen together, as the reference's ``create_prob_graph`` does
with its ``min_freq``. ``eps`` is added to every p(a, b) first, as the reference code does (1e-12, the
default of ``TopicConfig.eps``): a pair never seen together then scores log(eps / (p(a) p(b))) / -log(eps),
about -0.1 to -0.4 for the words of a 14 M-word corpus; with ``eps = 0`` it scores the limit -1.

Counting is vectorised: per chunk of documents, a sparse ``[windows, vocabulary]`` 0/1 membership matrix M is
built with numpy, and ``M.T @ M`` gives every pair's window count at once (scipy.sparse).
"""

from __future__ import annotations

import functools
import json
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp

from analysis.topics.types import NpmiConfig
from analysis.words import NUMBER_WORDS, STOP_WORDS, is_pool_word, words_of

FORMAT_VERSION = 1


@dataclass(frozen=True, eq=False)
class CooccurrenceStats:
    """Sliding-window counts of a corpus over its vocabulary (see module doc for the definitions)."""

    vocab: tuple[str, ...]
    """Vocabulary words, sorted."""
    word_freq: np.ndarray
    """``[V]`` int64: occurrences of each word in the corpus."""
    window_counts: np.ndarray
    """``[V]`` int64: windows containing each word."""
    pair_counts: sp.csr_matrix
    """``[V, V]`` int64, upper triangle only (row < column): windows containing both words."""
    n_windows: int
    window: int
    """Window length in words."""
    min_count: int
    """Fewest corpus occurrences of a vocabulary word."""
    corpus_id: str
    n_documents: int
    n_words: int
    """All words of the corpus (vocabulary or not)."""
    vocabulary: str = "all"
    """'all' words of at least ``min_count`` occurrences, or only the 'content' words among them (pool words)."""

    def __post_init__(self):
        object.__setattr__(self, "_index", {w: i for i, w in enumerate(self.vocab)})

    def index(self, word: str) -> int | None:
        return self._index.get(word)

    def __contains__(self, word: str) -> bool:
        return word in self._index

    def freq(self, word: str) -> int:
        i = self._index.get(word)
        return 0 if i is None else int(self.word_freq[i])

    def pair_count(self, a: str, b: str) -> int:
        i, j = self._index.get(a), self._index.get(b)
        if i is None or j is None:
            return 0
        if i == j:
            return int(self.window_counts[i])
        i, j = min(i, j), max(i, j)
        return int(self.pair_counts[i, j])

    def npmi_matrix(self, words, min_pair_count: int = 1, eps: float = 0.0) -> np.ndarray:
        """``[n, n]`` float64 NPMI among ``words`` (all in the vocabulary), diagonal 0.

        Pairs seen together in fewer than ``min_pair_count`` windows count as never seen together: with ``eps``
        0 they get -1, else log(eps / (p(a) p(b))) / -log(eps) (see the module doc).
        """
        idx = []
        for w in words:
            i = self._index.get(w)
            if i is None:
                raise KeyError(f"{w!r} is not in the vocabulary of {self.corpus_id}")
            idx.append(i)
        idx = np.asarray(idx, dtype=np.int64)
        n = len(idx)
        if n == 0:
            return np.zeros((0, 0))
        uniq, inverse = np.unique(idx, return_inverse=True)
        pc = self.pair_counts
        distinct = len(uniq) == n
        both = _pool_counts(pc.indptr, pc.indices, pc.data, idx if distinct else uniq,
                            np.full(pc.shape[0], -1, dtype=np.int64), max(1, min_pair_count))
        if not distinct:  # a word asked twice
            both = both[np.ix_(inverse, inverse)]
        lp = np.log(self.window_counts[idx].astype(np.float64) / self.n_windows)
        # the logs of p(a, b) of the pairs seen together (~10 % of a pool's) here, the rest in _npmi: the same
        # numbers in the same order as the formula over the whole matrix
        seen = np.flatnonzero(both)
        p_ab = both.ravel()[seen] / self.n_windows + eps
        log_eps = float(np.log(np.full(1, 0.0 / self.n_windows + eps))[0]) if eps > 0 else 0.0
        return _npmi(n, lp, seen, p_ab, np.log(p_ab), eps > 0, log_eps, 0.0 / self.n_windows + eps >= 1.0)


@numba.njit(cache=True)
def _pool_counts(indptr, indices, data, idx, pos, min_pair_count):
    """``[n, n]`` window counts of the pairs of vocabulary words ``idx`` (distinct) from the upper-triangle CSR
    arrays, in both triangles, 0 where below ``min_pair_count``; ``pos`` is a ``[V]`` scratch array of -1 (left
    as it was found). Walks only the n words' rows, where scipy's row-then-column slicing copies them first."""
    n = len(idx)
    out = np.zeros((n, n), np.int64)
    for a in range(n):
        pos[idx[a]] = a
    for a in range(n):
        r = idx[a]
        for p in range(indptr[r], indptr[r + 1]):
            b = pos[indices[p]]
            if b >= 0:
                out[a, b] += data[p]
                out[b, a] += data[p]
    for a in range(n):
        pos[idx[a]] = -1
        for b in range(n):
            if out[a, b] < min_pair_count:
                out[a, b] = 0
    return out


@numba.njit(cache=True)
def _npmi(n, lp, seen, p_ab, log_ab, smooth, log_eps, unseen_is_one):
    """The ``[n, n]`` NPMI matrix from the words' log p (``lp``) and, for the flat indices ``seen`` of the pairs
    seen together, p(a, b) and its log; unseen pairs: smoothed (p(a, b) = eps, ``log_eps``) or -1; in [-1, 1],
    1 where p(a, b) >= 1, diagonal 0."""
    out = np.empty((n, n))
    for i in range(n):
        for j in range(n):
            if not smooth:
                out[i, j] = -1.0
            elif unseen_is_one:
                out[i, j] = 1.0
            else:
                out[i, j] = (log_eps - lp[i] - lp[j]) / -log_eps
    for s in range(len(seen)):
        i = seen[s] // n
        j = seen[s] - i * n
        out[i, j] = 1.0 if p_ab[s] >= 1.0 else (log_ab[s] - lp[i] - lp[j]) / -log_ab[s]
    for i in range(n):
        for j in range(n):
            if out[i, j] < -1.0:
                out[i, j] = -1.0
            elif out[i, j] > 1.0:
                out[i, j] = 1.0
        out[i, i] = 0.0
    return out


def _vocabulary(texts: Iterable[str], progress: bool) -> tuple[Counter, int, int]:
    from tqdm import tqdm

    counts: Counter = Counter()
    n_docs = 0
    for text in tqdm(texts, desc="npmi: word counts", unit="doc", disable=not progress):
        counts.update(words_of(text))
        n_docs += 1
    n_words = sum(counts.values())
    return counts, n_docs, n_words


def _chunk_pairs(doc_ids: list[np.ndarray], n_words: list[int], window: int, n_vocab: int):
    """(upper-triangle pair counts, per-word window counts, windows) for a chunk of documents."""
    ids_all, win_all = [], []
    offset = 0
    offs = np.arange(window)
    for (pos, ids), n in zip(doc_ids, n_words):
        n_win = max(1, n - window + 1)
        if len(ids):
            # occurrence at position p lies in windows p - window + 1 .. p (those that exist)
            s = pos[:, None] - offs[None, :]
            ok = (s >= 0) & (s < n_win)
            win_all.append((s + offset)[ok])
            ids_all.append(np.broadcast_to(ids[:, None], s.shape)[ok])
        offset += n_win
    if not ids_all:
        return sp.csr_matrix((n_vocab, n_vocab), dtype=np.int64), np.zeros(n_vocab, dtype=np.int64), offset
    win = np.concatenate(win_all)
    ids = np.concatenate(ids_all)
    member = sp.csr_matrix((np.ones(len(win), dtype=np.int64), (win, ids)), shape=(offset, n_vocab))
    member.sum_duplicates()
    member.data[:] = 1  # a window contains a word or not
    co = (member.T @ member).tocsr()
    diag = co.diagonal().astype(np.int64)
    return sp.triu(co, k=1, format="csr"), diag, offset


def count_cooccurrences(texts: Iterable[str], corpus_id: str, window: int = 10, min_count: int = 5,
                        chunk_words: int = 500_000, progress: bool = True,
                        keep: Callable[[str], bool] | None = None, vocabulary: str = "all") -> CooccurrenceStats:
    """Sliding-window counts over ``texts`` (iterated twice: pass a list or another re-iterable).

    Two streaming passes: word occurrences (for the vocabulary), then window memberships in chunks of about
    ``chunk_words`` words, so memory follows the vocabulary and the chunk, not the corpus. ``keep`` limits the
    vocabulary further (windows still run over every word); ``vocabulary`` names that choice in the result.
    """
    from tqdm import tqdm

    if iter(texts) is texts:
        raise TypeError("texts is a one-shot iterator; pass a list or another re-iterable (it is read twice)")
    if window < 1 or min_count < 1:
        raise ValueError("window and min_count must be at least 1")
    counts, n_docs, n_words = _vocabulary(texts, progress)
    vocab = tuple(sorted(w for w, c in counts.items() if c >= min_count and (keep is None or keep(w))))
    index = {w: i for i, w in enumerate(vocab)}
    V = len(vocab)
    pairs = sp.csr_matrix((V, V), dtype=np.int64)
    window_counts = np.zeros(V, dtype=np.int64)
    n_windows = 0
    chunk: list[tuple[np.ndarray, np.ndarray]] = []
    lengths: list[int] = []
    in_chunk = 0

    def flush():
        nonlocal pairs, window_counts, n_windows, chunk, lengths, in_chunk
        if lengths:
            p, d, nw = _chunk_pairs(chunk, lengths, window, V)
            pairs = pairs + p
            window_counts += d
            n_windows += nw
        chunk, lengths, in_chunk = [], [], 0

    for text in tqdm(texts, total=n_docs, desc="npmi: windows", unit="doc", disable=not progress):
        words = words_of(text)
        pos = [(p, index[w]) for p, w in enumerate(words) if w in index]
        arr = np.asarray(pos, dtype=np.int64).reshape(-1, 2)
        chunk.append((arr[:, 0], arr[:, 1]))
        lengths.append(len(words))
        in_chunk += len(words)
        if in_chunk >= chunk_words:
            flush()
    flush()
    word_freq = np.array([counts[w] for w in vocab], dtype=np.int64)
    return CooccurrenceStats(vocab=vocab, word_freq=word_freq, window_counts=window_counts,
                             pair_counts=pairs.tocsr(), n_windows=int(n_windows), window=window,
                             min_count=min_count, corpus_id=corpus_id, n_documents=n_docs, n_words=n_words,
                             vocabulary=vocabulary)


def save_stats(stats: CooccurrenceStats, path: str | Path) -> Path:
    """Write ``stats`` to one compressed ``.npz`` file (vocabulary, counts, sparse pairs, parameters)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": FORMAT_VERSION, "n_windows": stats.n_windows, "window": stats.window,
            "min_count": stats.min_count, "corpus_id": stats.corpus_id, "n_documents": stats.n_documents,
            "n_words": stats.n_words, "vocabulary": stats.vocabulary}
    pc = stats.pair_counts.tocsr()
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, vocab=np.array(stats.vocab, dtype=np.str_), word_freq=stats.word_freq,
                        window_counts=stats.window_counts, pair_data=pc.data.astype(np.int64),
                        pair_indices=pc.indices.astype(np.int32), pair_indptr=pc.indptr.astype(np.int64),
                        meta=np.array(json.dumps(meta)))
    tmp.replace(path)
    return path


def load_stats(path: str | Path) -> CooccurrenceStats:
    """Read a file written by ``save_stats``."""
    with np.load(Path(path), allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        if meta.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: NPMI statistics format {meta.get('format')}, expected {FORMAT_VERSION}")
        vocab = tuple(str(w) for w in z["vocab"])
        V = len(vocab)
        pairs = sp.csr_matrix((z["pair_data"], z["pair_indices"], z["pair_indptr"]), shape=(V, V))
        return CooccurrenceStats(vocab=vocab, word_freq=z["word_freq"].astype(np.int64),
                                 window_counts=z["window_counts"].astype(np.int64), pair_counts=pairs,
                                 n_windows=int(meta["n_windows"]), window=int(meta["window"]),
                                 min_count=int(meta["min_count"]), corpus_id=str(meta["corpus_id"]),
                                 n_documents=int(meta["n_documents"]), n_words=int(meta["n_words"]),
                                 vocabulary=str(meta.get("vocabulary", "all")))


def reference_stats(config: NpmiConfig = NpmiConfig(), progress: bool = True) -> CooccurrenceStats:
    """Counts over the documents of ``config.corpora`` (``analysis.corpus.load_corpus`` names or paths), in
    order; the corpus id joins theirs with '+'. With ``config.content_words`` the vocabulary holds only words a
    pool can hold (``analysis.words.is_pool_word``): the NPMI of those is unchanged, the counts are far smaller."""
    from analysis.corpus import load_corpus

    texts: list[str] = []
    ids = []
    for name in config.corpora:
        corpus = load_corpus(name)
        texts.extend(d.text for d in corpus.documents)
        ids.append(corpus.info.corpus_id)
    return count_cooccurrences(texts, corpus_id="+".join(ids), window=config.window, min_count=config.min_count,
                               progress=progress, keep=is_pool_word if config.content_words else None,
                               vocabulary="content" if config.content_words else "all")


def stats_params(stats: CooccurrenceStats) -> dict:
    """The parameters that identify a statistics file (for a cache's runs table)."""
    return {"corpus_id": stats.corpus_id, "window": stats.window, "min_count": stats.min_count,
            "n_windows": stats.n_windows, "vocab_size": len(stats.vocab), "format": FORMAT_VERSION,
            **({} if stats.vocabulary == "all" else {"vocabulary": stats.vocabulary})}



def stats_path(config: NpmiConfig, folder: Path) -> Path:
    """Where ``cached_reference_stats`` keeps the statistics of ``config`` (whether or not they exist yet)."""
    import hashlib

    from analysis.corpus import embedded_version

    key = [config.corpora, config.window, config.min_count]
    key += [f"{name}: {v}" for name in config.corpora if (v := embedded_version(name)) is not None]
    if config.content_words:  # the word filter's lists are part of what was counted
        key.append("content:" + hashlib.sha256(" ".join(sorted(STOP_WORDS | NUMBER_WORDS)).encode()).hexdigest()[:8])
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return Path(folder) / f"npmi-{digest}.npz"


@functools.lru_cache(maxsize=1)
def _load_stats_once(path: str, _mtime_ns: int) -> CooccurrenceStats:
    """``load_stats``, read once per process while the file is unchanged (a build's topics stage asks for the
    same ~400 MB of statistics for every layer: ~5 s each)."""
    return load_stats(path)


def cached_reference_stats(config: NpmiConfig, folder: Path, progress: bool = True) -> tuple[CooccurrenceStats, str]:
    """(statistics, stats id) of ``config``: counted once, then read back from ``folder``. The stats id names
    what was counted (it keys the stored topics)."""
    import hashlib

    path = stats_path(config, folder)
    if path.exists():
        stats = _load_stats_once(str(path.resolve()), path.stat().st_mtime_ns)
    else:
        stats = reference_stats(config, progress=progress)
        save_stats(stats, path)
    stats_id = hashlib.sha256(json.dumps(stats_params(stats), sort_keys=True).encode()).hexdigest()[:12]
    return stats, stats_id
