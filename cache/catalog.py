"""Models, their vocabularies and corpora: what every other table refers to."""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from analysis.types import CorpusInfo, DictionaryInfo, Document, ModelInfo
from cache.db import Repo

_DICT_COLS = "source, model_id, name, format, architecture, layer, site, d_in, d_sae, k, path, meta"
_MODEL_COLS = ("name, model_id, source, architecture, n_layers, d_mlp, hook_point, act_fn, gated, weights_hash, "
               "tokenizer_id, prepend_bos")


@dataclass(frozen=True)
class VocabEntry:
    token_id: int
    token: str


class CatalogRepo(Repo):
    def put_model(self, info: ModelInfo, vocab: list[str], vocab_bytes: list[bytes] | None = None) -> None:
        """Register a model and (once per tokenizer) its decoded vocabulary and its tokens' bytes, token id = list
        index."""
        with self.transaction() as cur:
            cur.execute(f"INSERT OR REPLACE INTO models ({_MODEL_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", [
                info.name, info.model_id, info.source, info.architecture, info.n_layers, info.d_mlp, info.hook_point,
                info.act_fn, info.gated, info.weights_hash, info.tokenizer_id, info.prepend_bos])
            have = cur.execute("SELECT count(*) FROM vocab WHERE tokenizer_id = ?", [info.tokenizer_id]).fetchone()[0]
            missing = cur.execute("SELECT count(*) FROM vocab WHERE tokenizer_id = ? AND bytes IS NULL",
                                  [info.tokenizer_id]).fetchone()[0]
            if have != len(vocab) or (missing and vocab_bytes is not None):
                cur.execute("DELETE FROM vocab WHERE tokenizer_id = ?", [info.tokenizer_id])
                self._insert_arrow(cur, "vocab", pa.table({
                    "tokenizer_id": [info.tokenizer_id] * len(vocab),
                    "token_id": np.arange(len(vocab), dtype=np.int32), "token": vocab,
                    "bytes": pa.array(vocab_bytes or [None] * len(vocab), type=pa.binary())}))

    def missing_bytes(self) -> list[ModelInfo]:
        """Models whose vocabulary was stored without its tokens' bytes (caches from before they were kept)."""
        rows = self._q(f"SELECT {_MODEL_COLS} FROM models WHERE tokenizer_id IN (SELECT DISTINCT tokenizer_id FROM "
                       "vocab WHERE bytes IS NULL) ORDER BY model_id").fetchall()
        return [ModelInfo(*r) for r in rows]

    def put_corpus(self, info: CorpusInfo, documents: list[Document]) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT OR REPLACE INTO corpora (corpus_id, name, source, text_hash, n_docs, n_chars) "
                        "VALUES (?,?,?,?,?,?)",
                        [info.corpus_id, info.name, info.source, info.text_hash, info.n_docs, info.n_chars])
            cur.execute("DELETE FROM documents WHERE corpus_id = ?", [info.corpus_id])
            self._insert_arrow(cur, "documents", pa.table({
                "corpus_id": [info.corpus_id] * len(documents),
                "doc_id": [d.doc_id for d in documents], "title": [d.title for d in documents]}))

    def models(self) -> list[ModelInfo]:
        rows = self._q(f"SELECT {_MODEL_COLS} FROM models ORDER BY model_id").fetchall()
        return [ModelInfo(*r) for r in rows]

    def model(self, model: str) -> ModelInfo | None:
        """A model by id or by the name it was harvested under (lowest id first when a name has several)."""
        row = self._q(f"SELECT {_MODEL_COLS} FROM models WHERE model_id = ? OR name = ? ORDER BY model_id LIMIT 1",
                      [model, model]).fetchone()
        return ModelInfo(*row) if row else None

    def put_dictionary(self, d: DictionaryInfo) -> None:
        with self.transaction() as cur:
            cur.execute(f"INSERT OR REPLACE INTO dictionaries ({_DICT_COLS}, created_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?, "
                        "now())", [d.source, d.model_id, d.name, d.format, d.architecture, d.layer, d.site, d.d_in,
                                   d.d_sae, d.k, d.path, json.dumps(d.meta, sort_keys=True)])

    def dictionaries(self, model_id: str | None = None) -> list[DictionaryInfo]:
        """Every dictionary (of one model), by layer then name."""
        rows = self._q(f"SELECT {_DICT_COLS} FROM dictionaries" + (" WHERE model_id = ?" if model_id else "")
                       + " ORDER BY layer, name", [model_id] if model_id else []).fetchall()
        return [DictionaryInfo(*r[:-1], json.loads(r[-1] or "{}")) for r in rows]

    def dictionary(self, source: str) -> DictionaryInfo | None:
        row = self._q(f"SELECT {_DICT_COLS} FROM dictionaries WHERE source = ?", [source]).fetchone()
        return DictionaryInfo(*row[:-1], json.loads(row[-1] or "{}")) if row else None

    def corpora(self) -> list[CorpusInfo]:
        rows = self._q("SELECT corpus_id, name, source, text_hash, n_docs, n_chars FROM corpora "
                       "ORDER BY corpus_id").fetchall()
        return [CorpusInfo(*r) for r in rows]

    def corpus_arg(self, corpus_id: str) -> str | None:
        """The ``--corpus`` argument that reproduces a cached corpus: its embedded name or its path."""
        row = self._q("SELECT name, source FROM corpora WHERE corpus_id = ?", [corpus_id]).fetchone()
        return None if row is None else (row[0] if row[1] == "embedded" else row[1])

    def vocab(self, tokenizer_id: str, token_ids: list[int] | None = None) -> dict[int, str]:
        """token id -> decoded token string (all of them, or just ``token_ids``). A token holding part of a
        character reads as its bytes (``\\xd8``), not as U+FFFD, where its bytes are stored."""
        return self.tokens(tokenizer_id, token_ids)[0]

    def tokens(self, tokenizer_id: str, token_ids: list[int] | None = None
               ) -> tuple[dict[int, str], dict[int, bytes]]:
        """(token id -> its text as ``vocab`` gives it, token id -> bytes of the tokens holding part of a
        character, where stored), in one query."""
        sql = ("SELECT token_id, CASE WHEN bytes IS NOT NULL AND contains(token, '\ufffd') THEN bytes END, token "
               "FROM vocab WHERE tokenizer_id = ?")
        if token_ids is None:
            rows = self._q(sql, [tokenizer_id]).fetchall()
        else:
            rows = self._q(sql + " AND list_contains(?::INTEGER[], token_id)",
                           [tokenizer_id, sorted(set(token_ids))]).fetchall()
        text = {t: raw.decode("utf-8", errors="backslashreplace") if raw is not None else tok for t, raw, tok in rows}
        return text, {t: bytes(raw) for t, raw, _tok in rows if raw is not None}

    def token_ids(self, tokenizer_id: str, text: str) -> list[VocabEntry]:
        """Vocabulary entries equal to ``text``, also with a leading space (' Paris' for 'Paris')."""
        variants = [text, " " + text.lstrip(" ")] if not text.startswith(" ") else [text, text.lstrip(" ")]
        rows = self._q("SELECT token_id, token FROM vocab WHERE tokenizer_id = ? AND token IN "
                       "(SELECT unnest(?::VARCHAR[])) ORDER BY token_id", [tokenizer_id, variants]).fetchall()
        return [VocabEntry(*r) for r in rows]
