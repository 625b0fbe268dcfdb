"""Maximum edge-weight k-clique on a complete weighted graph: choose k vertices maximising the sum of their
pairwise weights (the "heaviest k-subgraph"). Weights may be negative (NPMI -1 for words never seen together).

Three solvers, all on a symmetric ``[n, n]`` matrix whose diagonal is ignored:

- ``solve_bnb``: exact branch and bound (ours), the one the pipeline uses;
- ``solve_milp``: the reference's 0/1 program (x_i chosen, e_ij <= x_i, e_ij <= x_j, sum x = k,
  sum e = k(k-1)/2, maximise sum w_ij e_ij over every pair) solved by HiGHS through scipy; an independent
  check and the benchmark baseline (the reference used CVXPY + SCIP);
- ``solve_greedy``: heaviest pair, then the vertex adding the most weight, k - 2 times.

Branch and bound, in short. Vertices are renumbered by decreasing "potential" (sum of their k-1 largest
weights) and subsets are enumerated as increasing index sequences, so every search node is (a chosen prefix P,
the candidates = all vertices after the last chosen one: a suffix of the order). For a node with r vertices
still to choose from suffix s, with g_c = sum of weights from c to P,

    best completion <= f(P) + (sum of the r largest values of  g_c + 1/2 * top_{r-1}(w_c, suffix s \\ {c}))

because each chosen pair's weight is counted half from each end and no vertex can gain more than its r - 1
largest weights inside the suffix. ``top_t(w_c, suffix s)`` depends only on (s, c, t), so it is tabulated
once (n x n x k numbers) and a node's bound costs one gather and one partial sort. The search is a depth-first
search over *batches* of nodes: a batch's children are generated and bounded in a few numpy operations, pruned
against the incumbent, sorted, and pushed in chunks (best chunk on top), so the Python overhead is per batch
rather than per node. The last two levels are closed exactly (max over one vertex, max over all pairs) instead
of being branched. The incumbent starts from a multi-start greedy improved by 1-swap local search, which is
often already optimal: the search then only has to prove it.
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np

from analysis.topics.types import CliqueResult, SolveStats

_EPS = 1e-9
"""Absolute tolerance: a node is pruned when its bound does not beat the incumbent by more than this."""


def _check(weights: np.ndarray, k: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 2 or w.shape[0] != w.shape[1]:
        raise ValueError(f"weights must be a square matrix, got shape {w.shape}")
    if k < 2:
        raise ValueError(f"k must be at least 2, got {k}")
    if not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite")
    w = (w + w.T) / 2.0  # tolerate float noise in a matrix meant to be symmetric
    np.fill_diagonal(w, 0.0)
    return w


def subset_weight(weights: np.ndarray, indices) -> float:
    """Sum of ``weights[i, j]`` over the pairs i < j of ``indices``."""
    idx = np.asarray(list(indices), dtype=np.int64)
    if len(idx) < 2:
        return 0.0
    sub = np.asarray(weights, dtype=np.float64)[np.ix_(idx, idx)]
    return float(np.triu(sub, 1).sum())


def _result(w: np.ndarray, indices, optimal: bool, stats: SolveStats) -> CliqueResult:
    idx = tuple(sorted(int(i) for i in indices))
    return CliqueResult(indices=idx, weight_sum=subset_weight(w, idx), optimal=optimal, stats=stats)


def _empty(method: str, t0: float) -> CliqueResult:
    return CliqueResult(indices=(), weight_sum=0.0, optimal=True, stats=SolveStats(method, time.perf_counter() - t0))


# ---------------------------------------------------------------- heuristics

def solve_greedy(weights: np.ndarray, k: int) -> CliqueResult:
    """Heaviest pair, then repeatedly the vertex with the largest total weight to the chosen ones."""
    t0 = time.perf_counter()
    w = _check(weights, k)
    n = len(w)
    if n < k:
        return _empty("greedy", t0)
    tri = np.where(np.triu(np.ones((n, n), dtype=bool), 1), w, -np.inf)
    i, j = np.unravel_index(int(np.argmax(tri)), tri.shape)
    chosen = [int(i), int(j)]
    gain = w[i] + w[j]
    free = np.ones(n, dtype=bool)
    free[chosen] = False
    while len(chosen) < k:
        c = int(np.argmax(np.where(free, gain, -np.inf)))
        chosen.append(c)
        free[c] = False
        gain = gain + w[c]
    return _result(w, chosen, n == k, SolveStats("greedy", time.perf_counter() - t0))


def _multistart_greedy(w: np.ndarray, k: int) -> np.ndarray:
    """``[n, k]`` sets: greedy growth from every single vertex, all starts at once."""
    n = len(w)
    rows = np.arange(n)
    chosen = np.zeros((n, k), dtype=np.int64)
    chosen[:, 0] = rows
    free = np.ones((n, n), dtype=bool)
    free[rows, rows] = False
    gain = w.copy()  # gain[start, c] = weight from c to the start's current set
    for step in range(1, k):
        c = np.argmax(np.where(free, gain, -np.inf), axis=1)
        chosen[:, step] = c
        free[rows, c] = False
        gain += w[c]
    return chosen


def local_search(weights: np.ndarray, indices, max_rounds: int = 1000) -> tuple[int, ...]:
    """Best-improvement 1-swap local search (one vertex in, one out) until no swap improves the weight."""
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    inside = np.zeros(n, dtype=bool)
    inside[list(indices)] = True
    for _ in range(max_rounds):
        members = np.flatnonzero(inside)
        others = np.flatnonzero(~inside)
        if len(others) == 0:
            break
        g = w[:, members].sum(axis=1)  # weight from every vertex to the set
        # swapping i (in) for o (out) changes the weight by g_o - w_oi - g_i
        delta = g[others][None, :] - w[np.ix_(members, others)] - g[members][:, None]
        a, b = np.unravel_index(int(np.argmax(delta)), delta.shape)
        if delta[a, b] <= _EPS:
            break
        inside[members[a]] = False
        inside[others[b]] = True
    return tuple(int(i) for i in np.flatnonzero(inside))


def _incumbent(w: np.ndarray, k: int, n_polish: int = 8) -> tuple[tuple[int, ...], float]:
    starts = _multistart_greedy(w, k)
    sums = w[starts[:, :, None], starts[:, None, :]].sum(axis=(1, 2)) / 2  # each start's subset_weight (diagonal 0)
    best_set: tuple[int, ...] = ()
    best = -np.inf
    seen: set[tuple[int, ...]] = set()
    for i in np.argsort(-sums):
        key = tuple(sorted(starts[i].tolist()))
        if key in seen:
            continue
        seen.add(key)
        polished = local_search(w, key)
        value = subset_weight(w, polished)
        if value > best:
            best, best_set = value, polished
        if len(seen) >= n_polish:
            break
    return best_set, best


# ---------------------------------------------------------------- branch and bound

def _top_sums(w: np.ndarray, k: int) -> np.ndarray:
    """``T[s, c, t]`` = sum of the t largest ``w[c, d]`` over d >= s, d != c (t = 0..k-1); -inf if fewer exist."""
    n = len(w)
    out = np.full((n + 1, n, k), -np.inf)
    out[:, :, 0] = 0.0
    for s in range(n):
        sub = w[:, s:].copy()
        cols = np.arange(s, n)
        sub[cols, cols - s] = -np.inf  # a vertex is not its own neighbour
        sub = -np.sort(-sub, axis=1)[:, : k - 1]
        csum = np.cumsum(sub, axis=1)
        t = csum.shape[1]
        out[s, :, 1 : t + 1] = csum
    out[np.isnan(out)] = -np.inf
    return out


ENUMERATE = 5000
"""``solve_bnb`` tries every subset of a star with at most this many and at most ``ENUMERATE_OUT`` words left out
(most stars hold k + 1 to k + 4 words: 11 to 1,001 subsets for k = 10), cheaper than setting up the search."""
ENUMERATE_OUT = 8
"""Enumeration holds a (subsets x left-out x left-out) block: at most 5,000 x 64 numbers."""


def _enumerate(w: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """The best k of n vertices by trying all, as the n - k left out: the kept set's weight is the total minus
    the left-out vertices' degrees plus the weight among them (those pairs were subtracted twice). Returns (kept
    vertices, subsets tried)."""
    n = len(w)
    out = np.array(list(itertools.combinations(range(n), n - k)), dtype=np.int64).reshape(-1, n - k)
    inner = w[out[:, :, None], out[:, None, :]].sum(axis=(1, 2)) / 2  # diagonal 0
    value = np.triu(w, 1).sum() - w.sum(axis=1)[out].sum(axis=1) + inner
    return np.setdiff1d(np.arange(n), out[int(np.argmax(value))]), len(out)


def solve_bnb(weights: np.ndarray, k: int, time_limit_s: float | None = 10.0, batch_size: int = 2048,
              incumbent: tuple[int, ...] | None = None, heuristic_start: bool = True) -> CliqueResult:
    """Exact maximum edge-weight k-clique by batched branch and bound (see module doc).

    Returns the optimum with ``optimal=True``, or, when ``time_limit_s`` runs out, the best set found with
    ``optimal=False``. Fewer than k vertices: an empty result. At most ``ENUMERATE`` subsets: all are tried
    instead (method 'enumerate'). ``incumbent`` (optional) seeds the search; ``heuristic_start=False`` skips the
    greedy + local-search start and the enumeration (the search alone then finds the optimum; used by tests to
    check the bound and the search on their own).
    """
    t0 = time.perf_counter()
    w0 = _check(weights, k)
    n = len(w0)
    if n < k:
        return _empty("bnb", t0)
    if n == k:
        return _result(w0, range(n), True, SolveStats("bnb", time.perf_counter() - t0))
    if heuristic_start and incumbent is None and n - k <= ENUMERATE_OUT and math.comb(n, k) <= ENUMERATE:
        keep, tried = _enumerate(w0, k)
        return _result(w0, keep, True, SolveStats("enumerate", time.perf_counter() - t0, nodes=tried))
    start_set, start_val = _incumbent(w0, k) if heuristic_start else ((), -np.inf)
    if incumbent is not None and len(incumbent) == k and subset_weight(w0, incumbent) > start_val:
        start_set, start_val = tuple(incumbent), subset_weight(w0, incumbent)

    # renumber by decreasing potential: strong vertices early, so leaving them out shrinks bounds fast
    potential = -np.sort(-w0, axis=1)[:, : k - 1].sum(axis=1)
    order = np.argsort(-potential, kind="stable")
    w = w0[np.ix_(order, order)]
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n)
    T = _top_sums(w, k)
    cols = np.arange(n)
    pair_ok = np.triu(np.ones((n, n), dtype=bool), 1)

    best = start_val
    best_set = np.sort(rank[np.asarray(start_set, dtype=np.int64)])
    nodes = 0
    timed_out = False

    def bound(f, g, s, r):
        h = g + 0.5 * T[s, :, r - 1]
        h = np.where(cols[None, :] >= s[:, None], h, -np.inf)
        top = -np.partition(-h, r - 1, axis=1)[:, :r]
        return f + top.sum(axis=1)

    # a batch: (depth m, f [N], g [N, n], s [N], chosen [N, k], ub [N])
    root = (0, np.zeros(1), np.zeros((1, n)), np.zeros(1, dtype=np.int64), np.full((1, k), -1, dtype=np.int64))
    stack = [(*root, bound(root[1], root[2], root[3], k))]
    while stack:
        if time_limit_s is not None and time.perf_counter() - t0 > time_limit_s:
            timed_out = True
            break
        m, f, g, s, chosen, ub = stack.pop()
        keep = ub > best + _EPS
        if not keep.all():
            f, g, s, chosen = f[keep], g[keep], s[keep], chosen[keep]
        N = len(f)
        if N == 0:
            continue
        nodes += N
        r = k - m
        if r <= 2:
            # close the last levels exactly
            if r == 1:
                vals = np.where(cols[None, :] >= s[:, None], g, -np.inf)
                c = np.argmax(vals, axis=1)
                total = f + vals[np.arange(N), c]
                i = int(np.argmax(total))
                if total[i] > best + _EPS:
                    best = float(total[i])
                    best_set = np.sort(np.append(chosen[i, :m], c[i]))
            else:
                pv = g[:, :, None] + g[:, None, :] + w[None, :, :]
                ok = pair_ok[None, :, :] & (cols[None, :, None] >= s[:, None, None])
                pv = np.where(ok, pv, -np.inf).reshape(N, n * n)
                cd = np.argmax(pv, axis=1)
                total = f + pv[np.arange(N), cd]
                i = int(np.argmax(total))
                if total[i] > best + _EPS:
                    best = float(total[i])
                    c, d = divmod(int(cd[i]), n)
                    best_set = np.sort(np.append(chosen[i, :m], [c, d]))
            continue
        # children: pick j in [s, n - r] as the next vertex
        last = n - r
        width = np.maximum(last - s + 1, 0)
        parent = np.repeat(np.arange(N), width)
        offs = np.arange(len(parent)) - np.repeat(np.cumsum(width) - width, width)
        j = s[parent] + offs
        cf = f[parent] + g[parent, j]
        cg = g[parent] + w[j]
        cs = j + 1
        cub = bound(cf, cg, cs, r - 1)
        alive = cub > best + _EPS
        if not alive.any():
            continue
        parent, j, cf, cg, cs, cub = parent[alive], j[alive], cf[alive], cg[alive], cs[alive], cub[alive]
        cchosen = chosen[parent].copy()
        cchosen[:, m] = j
        # best bound last, so it is popped first
        order_ub = np.argsort(cub, kind="stable")
        for a in range(0, len(order_ub), batch_size):
            sel = order_ub[a : a + batch_size]
            stack.append((m + 1, cf[sel], cg[sel], cs[sel], cchosen[sel], cub[sel]))
    if len(best_set) < k:  # only without a heuristic start, when the time ran out before any leaf
        best_set = np.sort(rank[list(solve_greedy(w0, k).indices)])
    stats = SolveStats("bnb", time.perf_counter() - t0, nodes=nodes,
                       incumbent_sum=start_val if heuristic_start else None)
    return _result(w0, order[best_set], not timed_out, stats)


# ---------------------------------------------------------------- MILP (HiGHS)

def solve_milp(weights: np.ndarray, k: int, time_limit_s: float | None = 60.0, tight: bool = False) -> CliqueResult:
    """The reference's 0/1 program, solved by HiGHS (``scipy.optimize.milp``).

    ``tight`` adds the valid equalities sum_j e_ij = (k - 1) x_i, which HiGHS solves much faster; without them
    the program is the reference's exactly. Time limit hit: the best feasible point, ``optimal=False``.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import coo_matrix, vstack

    t0 = time.perf_counter()
    w = _check(weights, k)
    n = len(w)
    if n < k:
        return _empty("milp", t0)
    iu, ju = np.triu_indices(n, 1)
    n_e = len(iu)
    n_var = n + n_e
    c = np.concatenate([np.zeros(n), -w[iu, ju]])  # milp minimises
    e_col = n + np.arange(n_e)
    rows = np.arange(n_e)
    # e_ij - x_i <= 0 and e_ij - x_j <= 0
    a1 = coo_matrix((np.r_[np.ones(n_e), -np.ones(n_e)], (np.r_[rows, rows], np.r_[e_col, iu])), shape=(n_e, n_var))
    a2 = coo_matrix((np.r_[np.ones(n_e), -np.ones(n_e)], (np.r_[rows, rows], np.r_[e_col, ju])), shape=(n_e, n_var))
    sums = coo_matrix((np.ones(n_var), (np.r_[np.zeros(n), np.ones(n_e)].astype(int), np.arange(n_var))),
                      shape=(2, n_var))
    parts = [a1, a2, sums]
    lb = [np.full(n_e, -np.inf), np.full(n_e, -np.inf), [k, k * (k - 1) / 2]]
    ub = [np.zeros(n_e), np.zeros(n_e), [k, k * (k - 1) / 2]]
    if tight:
        # sum_{j != i} e_ij - (k - 1) x_i = 0
        r_idx = np.r_[iu, ju, np.arange(n)]
        c_idx = np.r_[e_col, e_col, np.arange(n)]
        vals = np.r_[np.ones(2 * n_e), -(k - 1) * np.ones(n)]
        parts.append(coo_matrix((vals, (r_idx, c_idx)), shape=(n, n_var)))
        lb.append(np.zeros(n))
        ub.append(np.zeros(n))
    cons = LinearConstraint(vstack(parts).tocsr(), np.concatenate(lb), np.concatenate(ub))
    options = {"disp": False}
    if time_limit_s is not None:
        options["time_limit"] = float(time_limit_s)
    res = milp(c, constraints=cons, integrality=np.ones(n_var), bounds=Bounds(0, 1), options=options)
    seconds = time.perf_counter() - t0
    nodes = int(getattr(res, "mip_node_count", 0) or 0)
    if res.x is None:
        # no feasible point within the limit: fall back to greedy so the caller still gets a valid set
        fallback = solve_greedy(w, k)
        return CliqueResult(fallback.indices, fallback.weight_sum, False, SolveStats("milp", seconds, nodes))
    x = np.round(res.x[:n]).astype(bool)
    chosen = np.flatnonzero(x)
    if len(chosen) != k:
        raise RuntimeError(f"HiGHS returned {len(chosen)} chosen vertices, expected {k} (status {res.status})")
    return _result(w, chosen, res.status == 0, SolveStats("milp", seconds, nodes))


__all__ = ["solve_bnb", "solve_milp", "solve_greedy", "local_search", "subset_weight"]
