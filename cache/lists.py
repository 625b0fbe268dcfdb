"""Named lists of units, each with a note per unit (to keep and share a set of units)."""

from __future__ import annotations

from dataclasses import dataclass

from analysis.types import UnitId, UserError
from cache.db import Repo


@dataclass(frozen=True)
class ListItem:
    model_id: str
    unit: UnitId
    note: str


@dataclass(frozen=True)
class UnitList:
    name: str
    description: str
    items: list[ListItem]
    """In the order they were added."""
    updated_at: object


class ListRepo(Repo):
    def save(self, name: str, description: str = "") -> None:
        """Create a list, or change its description."""
        if not name.strip():
            raise UserError("a list needs a name")
        with self.transaction() as cur:
            cur.execute("INSERT INTO unit_lists (name, description, created_at, updated_at) VALUES (?, ?, now(), now()) "
                        "ON CONFLICT (name) DO UPDATE SET description = excluded.description, updated_at = now()",
                        [name.strip(), description])

    def add(self, name: str, model_id: str, unit: UnitId, note: str = "") -> None:
        """Put a unit on a list (created if new), or change its note if it is on it already."""
        self.save_if_missing(name)
        with self.transaction() as cur:
            key = [name, model_id, unit.source, unit.layer, unit.index]
            where = "list_name = ? AND model_id = ? AND source = ? AND layer = ? AND unit = ?"
            if cur.execute(f"SELECT 1 FROM unit_list_items WHERE {where}", key).fetchone():
                cur.execute(f"UPDATE unit_list_items SET note = ? WHERE {where}", [note, *key])
            else:
                cur.execute("INSERT INTO unit_list_items (list_name, model_id, source, layer, unit, note, added_at) "
                            "VALUES (?,?,?,?,?,?, now())", [*key, note])
            cur.execute("UPDATE unit_lists SET updated_at = now() WHERE name = ?", [name])

    def save_if_missing(self, name: str) -> None:
        if self.get(name) is None:
            self.save(name)

    def remove(self, name: str, model_id: str, unit: UnitId) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM unit_list_items WHERE list_name = ? AND model_id = ? AND source = ? AND layer = ? "
                        "AND unit = ?", [name, model_id, unit.source, unit.layer, unit.index])
            cur.execute("UPDATE unit_lists SET updated_at = now() WHERE name = ?", [name])

    def delete(self, name: str) -> None:
        with self.transaction() as cur:
            cur.execute("DELETE FROM unit_list_items WHERE list_name = ?", [name])
            cur.execute("DELETE FROM unit_lists WHERE name = ?", [name])

    def get(self, name: str) -> UnitList | None:
        row = self._q("SELECT name, description, updated_at FROM unit_lists WHERE name = ?", [name]).fetchone()
        if row is None:
            return None
        items = self._q("SELECT model_id, source, layer, unit, note FROM unit_list_items WHERE list_name = ? "
                        "ORDER BY added_at, rowid", [name]).fetchall()
        return UnitList(row[0], row[1] or "", [ListItem(m, UnitId(s, l, u), n or "") for m, s, l, u, n in items],
                        row[2])

    def all(self) -> list[UnitList]:
        """Every list, most recently changed first."""
        return [self.get(n) for n in self.names()]

    def names(self) -> list[str]:
        """Every list's name, most recently changed first."""
        return [r[0] for r in self._q("SELECT name FROM unit_lists ORDER BY updated_at DESC, name").fetchall()]

    def containing(self, model_id: str, unit: UnitId) -> list[str]:
        """Names of the lists a unit is on."""
        return [r[0] for r in self._q("SELECT list_name FROM unit_list_items WHERE model_id = ? AND source = ? AND "
                                      "layer = ? AND unit = ? ORDER BY list_name",
                                      [model_id, unit.source, unit.layer, unit.index]).fetchall()]
