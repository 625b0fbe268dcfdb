"""The N2G trie and its prediction. Works on token ids end to end.

A graph is a trie rooted at the activating token, walking *backwards* through the context: each node is a
token id or ANY (an unimportant token); a node where a pruned example ended stores that example's activation.
Prediction at position t walks the trie from token t backwards and returns the activation stored at the
deepest (most specific) matching end node, the largest if several are equally deep; 0 if nothing matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ANY = -1
"""Node key for 'any token'."""


@dataclass
class Node:
    children: dict[int, "Node"] = field(default_factory=dict)
    value: float | None = None
    """Activation of an example whose pruned context ends here (the largest if several)."""

    def child(self, key: int) -> "Node":
        return self.children.setdefault(key, Node())


@dataclass
class Graph:
    roots: dict[int, Node] = field(default_factory=dict)
    """Activating token id -> its trie."""

    def add(self, pattern: list[int], activation: float) -> None:
        """``pattern``: the activating token first, then the context backwards (ANY for unimportant tokens)."""
        node = self.roots.setdefault(pattern[0], Node())
        for key in pattern[1:]:
            node = node.child(key)
        node.value = activation if node.value is None else max(node.value, activation)

    def predict_at(self, tokens: list[int], t: int) -> float:
        root = self.roots.get(tokens[t])
        if root is None:
            return 0.0
        best_depth, best = -1, 0.0
        frontier = [(root, 0)]
        while frontier:
            node, depth = frontier.pop()
            if node.value is not None and (depth > best_depth or (depth == best_depth and node.value > best)):
                best_depth, best = depth, node.value
            pos = t - depth - 1
            if pos < 0:
                continue
            for key in (tokens[pos], ANY):
                nxt = node.children.get(key)
                if nxt is not None:
                    frontier.append((nxt, depth + 1))
        return best

    def predict(self, tokens: list[int]) -> list[float]:
        return [self.predict_at(tokens, t) for t in range(len(tokens))]

    def patterns(self) -> list[tuple[list[int], float]]:
        """Every stored (pattern, activation), pattern as in ``add``."""
        out = []

        def walk(node: Node, path: list[int]) -> None:
            if node.value is not None:
                out.append((path, node.value))
            for key, ch in node.children.items():
                walk(ch, path + [key])

        for tok, root in self.roots.items():
            walk(root, [tok])
        return out
