"""Words of English text: how corpora and topics split text into words, and which words carry no topic.

One small module that the corpora (word counts), the reference corpus and the topics lens (word pools, NPMI
statistics) share, so none of them imports another for it.
"""

from __future__ import annotations

import re

WORD_RE = re.compile(r"[a-z]+")
"""A word: a run of ASCII letters of the lower-cased text."""


def words_of(text: str) -> list[str]:
    """The words of a text, in order: lower-cased alphabetic runs."""
    return WORD_RE.findall(text.lower())


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
