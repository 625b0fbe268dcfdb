"""The star heuristic: split a word pool's NPMI graph into disjoint, dense candidate word sets.

Rules (after the reference's ``star_heuristic``, with the deviations marked):

1. Edges: pairs with theta_l <= NPMI <= theta_u. No self-loops (deviation: the reference's graph has each word
   as its own neighbour with NPMI ~1, so its kappa_l counts the word itself; our kappa_l counts neighbours only,
   hence our default kappa_l = k - 1 where the reference passes 10 for k = 10).
2. Words with fewer than kappa_l edges are dropped, with their edges (once, as in the reference: degrees are
   not recomputed after the drop).
3. Each remaining word's star is the word plus its neighbours; stars are ranked by the centre's mean edge weight
   (-1 for a centre left without edges), ties in pool order.
4. Greedily, best star first: skip a centre already used; its neighbours not yet used, strongest edge first,
   capped so the star has at most kappa_u words (kappa_u - 1 neighbours + the centre). A star is kept when it
   has at least max(k, kappa_l + 1) words, and only then are its words marked used (deviation: the reference
   also marks the words of a star it rejects as too small, so they cannot join a later star).
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


@dataclass(frozen=True)
class StarIndices:
    """A star as indices into the pool: neighbours by decreasing edge weight, then the centre."""

    indices: tuple[int, ...]
    center: int
    mean_edge: float


def find_stars(npmi: np.ndarray, k: int = 10, theta_l: float = 0.1, theta_u: float = 1.0,
               kappa_l: int | None = None, kappa_u: int = 32) -> list[StarIndices]:
    """Disjoint stars of the graph ``npmi`` (``[n, n]``, symmetric), best first (see module doc)."""
    w = np.asarray(npmi, dtype=np.float64)
    n = len(w)
    kappa_l = k - 1 if kappa_l is None else kappa_l
    min_size = max(k, kappa_l + 1)
    if n == 0:
        return []
    edge = (w >= theta_l) & (w <= theta_u)
    np.fill_diagonal(edge, False)
    keep = edge.sum(axis=1) >= kappa_l
    edge &= keep[:, None] & keep[None, :]
    centres = np.flatnonzero(keep)
    deg = edge.sum(axis=1)
    mean_edge = np.where(deg > 0, np.where(edge, w, 0.0).sum(axis=1) / np.maximum(deg, 1), -1.0)
    order = centres[np.argsort(-mean_edge[centres], kind="stable")]
    members, ends = _greedy(w, edge, order, kappa_u - 1, min_size)
    stars, start = [], 0
    for end in ends:
        star = tuple(int(i) for i in members[start:end])
        stars.append(StarIndices(indices=star, center=star[-1], mean_edge=float(mean_edge[star[-1]])))
        start = end
    return stars


@numba.njit(cache=True)
def _greedy(w, edge, order, max_neighbours, min_size):
    """Rule 4 of the module doc: the kept stars' members (neighbours by decreasing edge weight, ties in pool
    order, then the centre) concatenated, and where each star ends."""
    n = len(w)
    used = np.zeros(n, np.bool_)
    members = np.empty(n, np.int64)
    ends = np.empty(n, np.int64)
    n_members = 0
    n_stars = 0
    free = np.empty(n, np.int64)
    for c in order:
        if used[c]:
            continue
        n_free = 0
        for d in range(n):
            if edge[c, d] and not used[d]:
                free[n_free] = d
                n_free += 1
        nb = free[:n_free][np.argsort(-w[c, free[:n_free]], kind="mergesort")][:max_neighbours]
        if len(nb) + 1 < min_size:
            continue
        for d in nb:
            members[n_members] = d
            used[d] = True
            n_members += 1
        members[n_members] = c
        used[c] = True
        n_members += 1
        ends[n_stars] = n_members
        n_stars += 1
    return members[:n_members], ends[:n_stars]
