"""API replies kept on disk, so a rerun or a second pass pays nothing for a request it already made.

One JSON file per request, named by the hash of everything that decides the reply (endpoint model, prompt or
messages, parameters), in a folder beside the database (``<db>.replies/``). Files are written whole (a temporary
file renamed into place), so concurrent writers and an interrupted run leave either a complete reply or none.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path


class ReplyCache:
    def __init__(self, folder: Path):
        self.folder = Path(folder)

    @classmethod
    def beside(cls, db: Path) -> "ReplyCache":
        return cls(Path(str(db) + ".replies"))

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.folder / key[:2] / f"{key}.json"

    def get(self, key: str) -> dict | None:
        try:
            return json.loads(self._path(key).read_text(encoding="utf-8"))
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def put(self, key: str, reply: dict) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.{id(reply)}.tmp")
        tmp.write_text(json.dumps(reply, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)

    def __len__(self) -> int:
        return sum(1 for _ in self.folder.glob("*/*.json")) if self.folder.exists() else 0
