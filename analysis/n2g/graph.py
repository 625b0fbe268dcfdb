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


def contains_sequence(pattern: list[int], sequence: list[set[int]]) -> bool:
    """Whether ``sequence`` (in reading order; each position a set of acceptable token ids) occurs contiguously in
    ``pattern`` (activating token first, context backwards). ANY positions match nothing."""
    back = list(reversed(sequence))
    n = len(back)
    return any(all(pattern[i + j] in back[j] for j in range(n)) for i in range(len(pattern) - n + 1))


def paths(patterns: list[tuple[list[int], float]]) -> set[tuple[int, ...]]:
    """Every root-to-node path of the trie (the patterns' prefixes): the graph as a set, for overlap."""
    return {tuple(p[:d]) for p, _v in patterns for d in range(1, len(p) + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 0.0


def similar(target: list[tuple[list[int], float]], others: dict[int, list[tuple[list[int], float]]],
            n: int = 10) -> list[tuple[int, float]]:
    """The ``n`` units whose graphs overlap ``target``'s most (Jaccard over trie paths), best first, overlap > 0."""
    mine = paths(target)
    scored = [(u, jaccard(mine, paths(p))) for u, p in others.items()]
    return sorted([x for x in scored if x[1] > 0], key=lambda x: -x[1])[:n]
