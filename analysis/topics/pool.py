"""From a token ranking to a word pool: the distinct corpus words among a unit's most extreme tokens."""

from __future__ import annotations

import weakref
from collections.abc import Sequence

from analysis.topics.npmi import CooccurrenceStats
from analysis.topics.types import ACTIVATION_SOURCE, Polarity, TokenRanking, WordPool
from analysis.types import UnitId
from analysis.words import DROP_REASONS, drop_reason, normalise_token

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

    A token is kept when its normalised text is a pool word (``analysis.words.is_pool_word``), is in the statistics'
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
