"""Maximum edge-weight k-clique on a complete weighted graph: choose k vertices maximising the sum of their
pairwise weights (the "heaviest k-subgraph"). Weights may be negative (NPMI -1 for words never seen together).

Three solvers, all on a symmetric ``[n, n]`` matrix whose diagonal is ignored:

- ``solve_bnb``: exact branch and bound (ours, compiled with numba), the one the pipeline uses;
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
once (n x n x k numbers) and a node's bound is one pass over the suffix keeping the r largest. The search is a
depth-first search, children in vertex order, each bounded when it is made and dropped unless it beats the
incumbent; the last two vertices are chosen exactly (the best pair) instead of being branched. The incumbent
starts from greedy growth from every vertex, each improved by 1-swap local search (one vertex in, one out),
which is often already optimal: the search then only has to prove it.

The search, the bound table and the start are loops over at most a star's 32 vertices: numba compiles them (a
star of 16 words is solved in ~0.14 ms, one of 32 in ~0.46 ms; batches of nodes in numpy took ~2.5 ms). The
first call in a process compiles them (~3 s) or loads them from numba's cache beside this file.
"""

from __future__ import annotations

import functools
import time

import numba
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


# ---------------------------------------------------------------- greedy

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


# ---------------------------------------------------------------- branch and bound (compiled)

@numba.njit(cache=True)
def _insert(top, count, cap, v):
    """Keep ``top[:count]`` the ``cap`` largest values offered so far, in decreasing order; the new count."""
    if count < cap:
        p = count
        count += 1
    elif v > top[cap - 1]:
        p = cap - 1
    else:
        return count
    while p > 0 and top[p - 1] < v:
        top[p] = top[p - 1]
        p -= 1
    top[p] = v
    return count


@numba.njit(cache=True)
def _top_sums(w, k):
    """``T[s, c, t]`` = sum of the t largest ``w[c, d]`` over d >= s, d != c (t = 0..k-1); -inf if fewer exist."""
    n = w.shape[0]
    out = np.full((n + 1, n, k), -np.inf)
    top = np.empty(k - 1)
    for s in range(n + 1):
        for c in range(n):
            count = 0
            for d in range(s, n):
                if d != c:
                    count = _insert(top, count, k - 1, w[c, d])
            acc = 0.0
            out[s, c, 0] = 0.0
            for t in range(count):
                acc += top[t]
                out[s, c, t + 1] = acc
    return out


@numba.njit(cache=True)
def _greedy_start(w, k):
    """(the best set, its weight) of greedy growth from every vertex, each improved by best-improvement 1-swaps
    until none improves the weight by more than ``_EPS``."""
    n = w.shape[0]
    best = -np.inf
    best_set = np.zeros(k, np.int64)
    inside = np.zeros(n, np.bool_)
    gain = np.empty(n)  # weight from each vertex to the set
    for start in range(n):
        inside[:] = False
        inside[start] = True
        gain[:] = w[start]
        for _step in range(1, k):
            add = -1
            most = -np.inf
            for c in range(n):
                if not inside[c] and gain[c] > most:
                    most = gain[c]
                    add = c
            inside[add] = True
            gain += w[add]
        for _round in range(1000):  # swapping i (in) for o (out) changes the weight by gain_o - w_oi - gain_i
            most = _EPS
            out_i = -1
            in_o = -1
            for i in range(n):
                if inside[i]:
                    for o in range(n):
                        if not inside[o] and gain[o] - w[o, i] - gain[i] > most:
                            most = gain[o] - w[o, i] - gain[i]
                            out_i = i
                            in_o = o
            if out_i < 0:
                break
            inside[out_i] = False
            inside[in_o] = True
            gain += w[in_o] - w[out_i]
        total = 0.0
        for i in range(n):
            if inside[i]:
                total += gain[i]
        total /= 2
        if total > best + _EPS:
            best = total
            best_set[:] = np.flatnonzero(inside)
    return best_set, best


@numba.njit(cache=True)
def _now():
    with numba.objmode(t="float64"):
        t = time.perf_counter()
    return t


@numba.njit(cache=True)
def _search(w, k, T, best, best_set, deadline):
    """Depth-first branch and bound (module doc) from the incumbent (``best``, ``best_set``, improved in place).
    Returns (best, nodes, finished); ``finished`` False when ``deadline`` (perf_counter seconds) passed first."""
    n = w.shape[0]
    g = np.zeros((k + 1, n))  # g[m, c]: weight from c to the first m chosen
    f = np.zeros(k + 1)  # f[m]: weight among the first m chosen
    nxt = np.zeros(k + 1, np.int64)  # the next vertex to try at depth m
    chosen = np.zeros(k, np.int64)
    top = np.empty(k)
    nodes = 0
    m = 0
    while m >= 0:
        if nodes % 4096 == 0 and _now() > deadline:
            return best, nodes, False
        r = k - m
        nodes += 1
        if r == 2:  # the best pair of the suffix closes this node exactly
            s = chosen[m - 1] + 1 if m > 0 else 0
            bc = -1
            bd = -1
            most = best + _EPS
            for c in range(s, n):
                fc = f[m] + g[m, c]
                for d in range(c + 1, n):
                    v = fc + g[m, d] + w[c, d]
                    if v > most:
                        most = v
                        bc = c
                        bd = d
            if bc >= 0:
                best = most
                best_set[:m] = chosen[:m]
                best_set[m] = bc
                best_set[m + 1] = bd
            m -= 1
            continue
        j = nxt[m]
        if j > n - r:  # too few vertices left after j
            m -= 1
            continue
        nxt[m] = j + 1
        cf = f[m] + g[m, j]
        for c in range(n):
            g[m + 1, c] = g[m, c] + w[j, c]
        # the child's bound: f + the r - 1 largest of g_c + T[j + 1, c, r - 2] / 2 over the suffix after j
        count = 0
        for c in range(j + 1, n):
            count = _insert(top, count, r - 1, g[m + 1, c] + 0.5 * T[j + 1, c, r - 2])
        bound = cf
        for t in range(r - 1):
            bound += top[t]
        if count < r - 1 or bound <= best + _EPS:
            continue
        chosen[m] = j
        f[m + 1] = cf
        nxt[m + 1] = j + 1
        m += 1
    return best, nodes, True


@functools.cache
def _compiled() -> None:
    """Compile (or load from numba's cache) the search's kernels once per process, on a 3-vertex graph, so that the
    first solve's time limit is not spent compiling (a cold cache on a busy 2-core machine took over 10 s)."""
    w = np.ones((3, 3)) - np.eye(3)
    best_set, start = _greedy_start(w, 2)
    _search(w, 2, _top_sums(w, 2), start, best_set, np.inf)


def solve_bnb(weights: np.ndarray, k: int, time_limit_s: float | None = 10.0,
              heuristic_start: bool = True) -> CliqueResult:
    """Exact maximum edge-weight k-clique by branch and bound (see module doc).

    Returns the optimum with ``optimal=True``, or, when ``time_limit_s`` runs out, the best set found with
    ``optimal=False``. Fewer than k vertices: an empty result. ``heuristic_start=False`` skips the greedy +
    local-search start (the search alone then finds the optimum; used by tests to check the bound and the search
    on their own).
    """
    _compiled()
    t0 = time.perf_counter()
    w0 = _check(weights, k)
    n = len(w0)
    if n < k:
        return _empty("bnb", t0)
    if n == k:
        return _result(w0, range(n), True, SolveStats("bnb", time.perf_counter() - t0))
    # renumber by decreasing potential: strong vertices early, so leaving them out shrinks bounds fast
    potential = -np.sort(-w0, axis=1)[:, : k - 1].sum(axis=1)
    order = np.argsort(-potential, kind="stable")
    w = np.ascontiguousarray(w0[np.ix_(order, order)])
    best_set, start_val = _greedy_start(w, k) if heuristic_start else (np.zeros(k, np.int64), -np.inf)
    deadline = np.inf if time_limit_s is None else t0 + time_limit_s
    best, nodes, finished = _search(w, k, _top_sums(w, k), start_val, best_set, deadline)
    stats = SolveStats("bnb", time.perf_counter() - t0, nodes=nodes,
                       incumbent_sum=start_val if heuristic_start else None)
    if best == -np.inf:  # only without a start, when the time ran out before any leaf
        return _result(w0, solve_greedy(w0, k).indices, False, stats)
    return _result(w0, order[best_set], finished, stats)


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


__all__ = ["solve_bnb", "solve_milp", "solve_greedy", "subset_weight"]
