"""Tokens as bytes, and the runs of tokens that must be shown together to be readable.

Byte-level tokenizers split a character of several UTF-8 bytes (Arabic, Hebrew, CJK, emoji) over tokens; each
piece alone decodes to U+FFFD. ``utf8_runs`` groups consecutive tokens whose bytes only decode together, so a
page shows the character once, still with every token's own value.
"""

from __future__ import annotations

import re
from functools import lru_cache

MAX_RUN = 8
"""At most this many tokens are joined (a UTF-8 character has at most 4 bytes; a few tokens may hold one each)."""

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted: the characters byte-level BPE vocabularies use."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def vocab_bytes(tokenizer) -> list[bytes]:
    """Every token's bytes, token id = list index: the byte-level table where a vocabulary uses it, a byte
    fallback token (``<0xE2>``) as its byte, SentencePiece's ``▁`` as a space, else the decoded text."""
    table = _byte_decoder()
    pieces = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], clean_up_tokenization_spaces=False)
    special = set(getattr(tokenizer, "all_special_tokens", []))
    out = []
    for piece, text in zip(pieces, texts):
        if piece is None or piece in special or "\ufffd" not in text:
            out.append(text.encode("utf-8"))
        elif m := _BYTE_FALLBACK.match(piece):
            out.append(bytes([int(m.group(1), 16)]))
        elif all(ch in table for ch in piece):
            out.append(bytes(table[ch] for ch in piece))
        else:
            out.append(piece.replace("▁", " ").encode("utf-8"))
    return out


def utf8_runs(pieces: list[bytes]) -> list[tuple[int, int, str]]:
    """``(start, end, text)`` runs covering the tokens in order: a token that decodes alone is its own run; a
    token with a split character joins the fewest following tokens (at most ``MAX_RUN``) whose bytes decode
    together. Bytes that never complete a character stay one run each, shown as ``\\xNN`` escapes."""
    runs, i, n = [], 0, len(pieces)
    while i < n:
        for j in range(i + 1, min(n, i + MAX_RUN) + 1):
            try:
                runs.append((i, j, b"".join(pieces[i:j]).decode("utf-8")))
                break
            except UnicodeDecodeError:
                continue
        else:
            runs.append((i, i + 1, pieces[i].decode("utf-8", errors="backslashreplace")))
            j = i + 1
        i = j
    return runs


def joined_runs(pieces: list[bytes]) -> tuple[tuple[int, int, str], ...]:
    """``utf8_runs`` when some run joins tokens, else () (every token reads alone: nothing to merge)."""
    runs = utf8_runs(pieces)
    return tuple(runs) if any(e - s > 1 for s, e, _t in runs) else ()
