"""From a token ranking to a word pool: the distinct corpus words among a unit's most extreme tokens."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from analysis.topics.npmi import CooccurrenceStats
from analysis.topics.types import ACTIVATION_SOURCE, Polarity, TokenRanking, WordPool
from analysis.types import UnitId

MIN_WORD_LETTERS = 3

# Common English function words and fillers (our own list, ~230 words): pronouns, determiners, auxiliaries,
# prepositions, conjunctions, frequent adverbs, and contraction stems as tokenizers split them ("don", "isn").
STOP_WORDS: frozenset[str] = frozenset("""
a about above across after afterwards again against all almost alone along already also although always am
among amongst an and another any anybody anyhow anyone anything anyway anywhere are aren around as at
back be became because become becomes becoming been before beforehand behind being below beside besides
between beyond both but by can cannot could couldn did didn do does doesn doing don done down during each
either else elsewhere enough etc even ever every everybody everyone everything everywhere except few for
former formerly from further had hadn has hasn have haven having he hence her here hereafter hereby herein
hers herself him himself his how however i if in indeed instead into is isn it its itself just last latter
least less let like many may maybe me meanwhile might mine more moreover most mostly much must my myself
namely neither never nevertheless next no nobody none nor not nothing now nowhere of off often on once one
only onto or other others otherwise our ours ourselves out over own per perhaps please quite rather really
same several shall shan she should shouldn since so some somebody somehow someone something sometime
sometimes somewhere still such than that the their theirs them themselves then thence there thereafter
thereby therefore therein thereupon these they this those though through throughout thru thus to together
too toward towards under unless until up upon us very via was wasn we well were weren what whatever when
whence whenever where whereafter whereas whereby wherein whereupon wherever whether which while whither who
whoever whole whom whose why will with within without won would wouldn yet you your yours yourself
yourselves ll ve re
""".split())

NUMBER_WORDS: frozenset[str] = frozenset("""
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen
eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred hundreds thousand thousands
million millions billion billions trillion first second third fourth fifth sixth seventh eighth ninth tenth
twice thrice half dozen
""".split())
"""Number words: as uninformative for a topic as the digits the word pattern already leaves out."""

DROP_REASONS = ("not a word", "under 3 letters", "stop word", "number word", "not in the reference corpus",
                "repeated")
"""Why a token gives no pool word: digits, punctuation, non-ASCII or whitespace; too short; a function word;
a number word; absent from (or too rare in) the reference corpus; a word an earlier token already gave."""

_MARKERS = ("Ġ", "▁", "Ċ", "ĉ")
"""Leading-space (and newline/tab) markers of byte-level BPE and SentencePiece vocabularies."""


def normalise_token(text: str) -> str:
    """Lower-case, strip whitespace and any leading-space markers (``' word'``, ``'Ġword'``, ``'▁word'``)."""
    s = text.strip()
    while s.startswith(_MARKERS):
        s = s[1:].lstrip()
    return s.lower().strip()


def drop_reason(word: str) -> str | None:
    """Why a normalised token text is not a pool word (one of ``DROP_REASONS``), or None if it is one."""
    if not (word.isascii() and word.isalpha()):
        return "not a word"
    if len(word) < MIN_WORD_LETTERS:
        return "under 3 letters"
    if word in STOP_WORDS:
        return "stop word"
    if word in NUMBER_WORDS:
        return "number word"
    return None


def is_pool_word(word: str) -> bool:
    """Alphabetic (ASCII letters: the corpus words are ``[a-z]+``), at least 3 letters, not a stop or number word."""
    return drop_reason(word) is None


_KINDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _token_kinds(tokenizer, stats: CooccurrenceStats, min_word_count: int) -> dict[int, tuple[str, str | None]]:
    """token id -> (normalised word, why it is no pool word or None), filled as tokens come, remembered per
    tokenizer and statistics: pools decode and check the same tokens over and over (a layer's topics see each
    of the vocabulary's tokens hundreds of times)."""
    try:
        per_tokenizer = _KINDS.setdefault(tokenizer, weakref.WeakKeyDictionary())
    except TypeError:  # not weak-referenceable: nothing remembered
        return {}
    return per_tokenizer.setdefault(stats, {}).setdefault(min_word_count, {})


def build_pool(ranking: TokenRanking, tokenizer, stats: CooccurrenceStats, min_word_count: int = 0) -> WordPool:
    """Pool words of a ranking, in ranking order, deduplicated.

    A token is kept when its normalised text is a pool word (``is_pool_word``), is in the statistics'
    vocabulary (so it occurs at least ``stats.min_count`` times), and occurs at least ``min_word_count`` times;
    the others are counted by reason in ``WordPool.dropped``.
    """
    kinds = _token_kinds(tokenizer, stats, min_word_count)
    words: list[str] = []
    ids: list[int] = []
    seen: set[str] = set()
    dropped = dict.fromkeys(DROP_REASONS, 0)
    for tid in ranking.token_ids:
        tid = int(tid)
        kind = kinds.get(tid)
        if kind is None:
            w = normalise_token(tokenizer.decode([tid]))
            why = drop_reason(w)
            if why is None and (w not in stats or stats.freq(w) < min_word_count):
                why = "not in the reference corpus"
            kind = kinds[tid] = (w, why)
        w, why = kind
        if why is None and w in seen:
            why = "repeated"
        if why is not None:
            dropped[why] += 1
            continue
        seen.add(w)
        words.append(w)
        ids.append(tid)
    return WordPool(words=tuple(words), token_ids=tuple(ids), n_tokens=len(ranking.token_ids),
                    dropped=tuple((r, n) for r, n in dropped.items() if n))


def activation_ranking(token_means: Sequence[tuple[int, float]], unit: UnitId, polarity: Polarity,
                       tau: int = 900) -> TokenRanking:
    """A ranking from a harvest token table: ``(token_id, mean activation)`` pairs, any order.

    pos: the tau tokens with the largest mean activation, largest first; neg: the tau most negative, most
    negative first. Ties keep the input order.
    """
    items = list(token_means)
    sign = -1.0 if polarity == Polarity.POS else 1.0
    order = sorted(range(len(items)), key=lambda i: sign * float(items[i][1]))[:tau]
    return TokenRanking(mode=ACTIVATION_SOURCE, unit=unit, polarity=Polarity(polarity),
                        token_ids=tuple(int(items[i][0]) for i in order),
                        scores=tuple(float(items[i][1]) for i in order))


def activation_table(rec) -> list[tuple[int, float]]:
    """(token id, mean activation) of a harvested unit, for ``activation_ranking``: the means over all its
    stored records, overridden by the harvest's token table where it has the token (corpus-wide means)."""
    from analysis.explain import token_means

    records = (rec.most_positive_activation_records + rec.random_sample
               + [r for b in rec.random_sample_by_quantile for r in b])
    table = {tid: m for (tid, _t), (m, _c) in token_means(records).items()}
    table.update({tid: m for tid, _t, m, _c in rec.top_tokens})
    return list(table.items())
