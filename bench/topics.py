"""Word-pool topics benchmark: exact solver speed, topic quality on the embedded model, NPMI counting cost.

Parts (markdown tables on stdout):
  1. NPMI counts over the reference corpus (enwiki-sample + lee-background): our vectorised counting vs a
     pure-Python window-set loop (on the Lee corpus only: the loop is slow), file size and load time.
  2. SmolLM2 projections: whole-layer rankings (tau = 900, both ends) for hi-i and hi-c.
  3. Topics for N neurons of layers 0, 15, 29 in hi-i and hi-c, both polarities: pools, stars, best-topic
     NPMI vs random k-word sets drawn from the same pool, time per neuron-polarity.
  4. Star-size sweep (k = 10, sizes 10..32): our branch and bound vs HiGHS (the reference's 0/1 program, and
     the same with the valid equalities sum_j e_ij = (k-1) x_i) vs greedy, on random NPMI-like matrices and
     real NPMI matrices from part 3 (the largest stars, and prefixes of real pools).

    python -m bench.topics [--neurons 50] [--layers 0,15,29] [--threads 1] [--milp-limit 30]
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch


def python_loop_counts(texts, window, vocab):
    """Baseline: one Python set per window, one Counter update per pair (what a first version would write)."""
    single, pair, n_windows = Counter(), Counter(), 0
    for text in texts:
        words = [w for w in re.findall(r"[a-z]+", text.lower())]
        for s in range(max(1, len(words) - window + 1)):
            ws = sorted({w for w in words[s : s + window] if w in vocab})
            n_windows += 1
            single.update(ws)
            for i in range(len(ws)):
                for j in range(i + 1, len(ws)):
                    pair[(ws[i], ws[j])] += 1
    return single, pair, n_windows


OLD_CORPORA = ("enwiki-sample", "lee-background")
"""The reference before issue 12 (all words, 10-word windows); None below means NpmiConfig's defaults."""


def npmi_config(corpora, content, window):
    from analysis.topics import NpmiConfig

    base = NpmiConfig()
    return NpmiConfig(corpora=corpora or base.corpora, content_words=content,
                      window=window if corpora is None else 10, min_count=base.min_count)


def part_npmi(tmp: Path, window: int):
    import resource

    from analysis.corpus import load_corpus
    from analysis.topics import count_cooccurrences, load_stats, reference_stats, save_stats

    print(f"\n### NPMI counts (min_count 5)\n")
    print("| corpus | window | vocabulary kept | words | windows | vocabulary | pairs stored | count s | peak RSS after | "
          "file | load s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    out = {}
    for corpora, content in ((OLD_CORPORA, False), (None, True)):
        config = npmi_config(corpora, content, window)
        t0 = time.perf_counter()
        stats = reference_stats(config, progress=False)
        t_count = time.perf_counter() - t0
        path = save_stats(stats, tmp / f"npmi-{len(out)}.npz")
        t0 = time.perf_counter()
        load_stats(path)
        t_load = time.perf_counter() - t0
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"| {stats.corpus_id} | {stats.window} | {stats.vocabulary} | {stats.n_words:,} | {stats.n_windows:,} | "
              f"{len(stats.vocab):,} | {stats.pair_counts.nnz:,} | {t_count:.1f} | {rss:.2f} GiB | "
              f"{path.stat().st_size / 2**20:.1f} MiB | {t_load:.2f} |")
        out[corpora is None] = stats
    lee = [d.text for d in load_corpus("lee-background").documents]
    t0 = time.perf_counter()
    lee_stats = count_cooccurrences(lee, "lee", progress=False)
    t_lee = time.perf_counter() - t0
    t0 = time.perf_counter()
    single, pair, n_windows = python_loop_counts(lee, 10, set(lee_stats.vocab))
    t_loop = time.perf_counter() - t0
    assert n_windows == lee_stats.n_windows and sum(pair.values()) == int(lee_stats.pair_counts.sum())
    print(f"\nCounting baseline on lee-background ({lee_stats.n_words:,} words): ours {t_lee:.2f} s, a pure-Python "
          f"window-set loop {t_loop:.2f} s ({t_loop / t_lee:.0f}x).")
    return out[False], out[True]


def part_projection(subject):
    from analysis.topics import project_rankings

    print("\n### Whole-layer projections (SmolLM2-135M, 1,536 neurons, tau = 900 both ends, batch 256)\n")
    print("| mode | layer | blocks run | seconds | neurons/s |")
    print("|---|---|---|---|---|")
    for mode, layer in [("hi-i", 15), ("hi-c", 15), ("hi-c", 0)]:
        t0 = time.perf_counter()
        rankings = project_rankings(subject, layer, mode, None, tau=900)
        dt = time.perf_counter() - t0
        assert len(rankings) == 2 * subject.info.d_mlp
        blocks = 0 if mode == "hi-i" else subject.info.n_layers - layer - 1
        print(f"| {mode} | {layer} | {blocks} | {dt:.1f} | {subject.info.d_mlp / dt:,.0f} |")


def part_topics(subject, configs, layers, n_neurons):
    """Every config on the same rankings. configs: (name, stats, TopicConfig)."""
    from analysis.topics import project_rankings, topics_from_ranking

    rng = np.random.default_rng(0)
    print(f"\n### Topics, {n_neurons} neurons per layer, both polarities (k = 10, tau = 900, theta = [0.1, 1], "
          f"kappa_u = 32)\n")
    print("| NPMI reference | layer | mode | neuron-polarities | with a topic: pos / neg | pool words (mean) | "
          "stars (mean) | best topic NPMI (mean) | random 10-sets NPMI (mean) | best - random | best > random p95 | "
          "all optimal | topic stage s per neuron-polarity (mean / max) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    summary = {name: [] for name, _s, _c in configs}
    examples = {}
    stars, pools = [], []
    for layer in layers:
        neurons = sorted(rng.choice(subject.info.d_mlp, size=n_neurons, replace=False).tolist())
        shown = set(np.random.default_rng(100 + layer).permutation(neurons)[:5].tolist())  # seeded, not picked
        for mode in ("hi-i", "hi-c"):
            rankings = project_rankings(subject, layer, mode, neurons, tau=900)
            for name, stats, config in configs:
                rows, per, optimal = [], [], True
                for rk in rankings:
                    t1 = time.perf_counter()
                    r = topics_from_ranking(rk, subject.tokenizer, stats, config)
                    per.append(time.perf_counter() - t1)
                    optimal &= all(t.optimal for t in r.topics)
                    rnd = np.asarray(r.random_scores)
                    best = r.topics[0].score if r.topics else None
                    rows.append((rk.polarity.value, best, float(rnd.mean()) if len(rnd) else None,
                                 float(np.percentile(rnd, 95)) if len(rnd) else None, len(r.pool.words), len(r.stars)))
                    summary[name].append((mode, rk.polarity.value, best, rows[-1][2]))
                    if config is configs[-1][2]:
                        stars.extend(s.npmi for s in r.stars)
                        pools.append(r.pool.words)
                    if mode == "hi-c" and rk.polarity.value == "pos" and rk.unit.index in shown:
                        examples.setdefault((layer, rk.unit.index), {})[name] = r
                n = len(rows)
                got = [r for r in rows if r[1] is not None]
                share = " / ".join(f"{np.mean([r[1] is not None for r in rows if r[0] == p]):.0%}" for p in ("pos", "neg"))
                best = np.mean([r[1] for r in got]) if got else np.nan
                rnd = np.mean([r[2] for r in got if r[2] is not None]) if got else np.nan
                beats = sum(r[1] > r[3] for r in got if r[3] is not None)
                print(f"| {name} | {layer} | {mode} | {n} | {share} | {np.mean([r[4] for r in rows]):.0f} | "
                      f"{np.mean([r[5] for r in rows]):.1f} | {best:.3f} | {rnd:.3f} | {best - rnd:.3f} | "
                      f"{beats}/{len(got)} | {optimal} | {np.mean(per):.3f} / {max(per):.3f} |", flush=True)
    print("\n### Over all layers\n")
    print("| NPMI reference | share with a topic: hi-i pos / hi-c pos / all | best topic NPMI (mean) | "
          "best - random (mean) |")
    print("|---|---|---|---|")
    for name, rows in summary.items():
        def share(mode=None):
            sel = [r for r in rows if (mode is None or (r[0] == mode and r[1] == "pos"))]
            return np.mean([r[2] is not None for r in sel])

        got = [r for r in rows if r[2] is not None]
        print(f"| {name} | {share('hi-i'):.0%} / {share('hi-c'):.0%} / {share():.0%} | "
              f"{np.mean([r[2] for r in got]):.3f} | {np.mean([r[2] - r[3] for r in got if r[3] is not None]):.3f} |")
    print("\n### Example topics (Hi-C, positive end; neurons drawn by a seed, not picked): best topic and NPMI\n")
    print("| neuron | " + " | ".join(name for name, _s, _c in configs) + " |")
    print("|---|" + "---|" * len(configs))
    for (layer, unit), by in sorted(examples.items()):
        cells = []
        for name, _s, _c in configs:
            r = by.get(name)
            cells.append(f"{' '.join(r.topics[0].words)} ({r.topics[0].score:+.2f})" if r and r.topics else
                         "(no topic)")
        print(f"| L{layer}/N{unit} | " + " | ".join(cells) + " |")
    return stars, pools


def npmi_like(rng, n):
    m = rng.uniform(-0.2, 0.5, size=(n, n))
    m[rng.random((n, n)) < 0.25] = -1.0
    m = np.triu(m, 1)
    return m + m.T


def part_sweep(real_stars, real_pools, stats, milp_limit: float, sizes=(10, 12, 16, 20, 24, 28, 32), k=10):
    from analysis.topics import solve_bnb, solve_greedy, solve_milp

    from analysis.topics import find_stars

    rng = np.random.default_rng(5)
    sizes_seen = np.array([len(m) for m in real_stars])
    print(f"\nStars from part 3: {len(sizes_seen)}, sizes min {sizes_seen.min()} / median "
          f"{np.median(sizes_seen):.0f} / max {sizes_seen.max()}. Larger real stars for the sweep: the same pools "
          f"with theta_l = 0.0 (any positive NPMI is an edge).")
    loose = []
    for p in real_pools:
        if len(p) >= k:
            m = stats.npmi_matrix(p)
            loose.extend(m[np.ix_(st.indices, st.indices)] for st in find_stars(m, k=k, theta_l=0.0))
    real_stars = list(real_stars) + loose
    by_size: dict[int, list[np.ndarray]] = {}
    for m in real_stars:
        by_size.setdefault(len(m), []).append(m)
    pool_mats = [stats.npmi_matrix(p[:32]) for p in real_pools if len(p) >= 32][:3]
    print(f"\n### Exact solving by star size (k = {k}); HiGHS limit {milp_limit:.0f} s\n")
    print("| size | matrices | bnb s (max) | bnb nodes (max) | HiGHS, reference program s (1 random) | "
          "HiGHS + equalities s (max of 1 random, 1 real) | same optimum | greedy gap (mean / max, NPMI) |")
    print("|---|---|---|---|---|---|---|---|")
    worst_bnb = 0.0
    for n in sizes:
        mats = [("rand", npmi_like(rng, n)) for _ in range(3)]
        mats += [("pool", m[:n, :n]) for m in pool_mats]
        real = sorted(by_size.get(n, []), key=lambda m: -np.mean(m))[:2]
        if not real:  # nearest larger real stars, cut to n words
            bigger = sorted((m for m in real_stars if len(m) > n), key=len)[:2]
            real = [m[:n, :n] for m in bigger]
        mats += [("star", m) for m in real]
        t_bnb, nodes, t_ref, t_tight, same, gaps = [], [], [], [], True, []
        for i, (kind, m) in enumerate(mats):
            b = solve_bnb(m, k, time_limit_s=60)
            assert b.optimal
            t_bnb.append(b.stats.seconds)
            nodes.append(b.stats.nodes)
            g = solve_greedy(m, k)
            gaps.append((b.weight_sum - g.weight_sum) / (k * (k - 1) / 2))
            if i in (0, len(mats) - 1):  # HiGHS on one random and one real matrix per size: it is slow
                h = solve_milp(m, k, tight=True, time_limit_s=milp_limit)
                t_tight.append(h.stats.seconds if h.optimal else float("inf"))
                same &= (not h.optimal) or abs(h.weight_sum - b.weight_sum) < 1e-6
                if n <= 24 and i == 0:
                    h0 = solve_milp(m, k, tight=False, time_limit_s=milp_limit)
                    t_ref.append(h0.stats.seconds if h0.optimal else float("inf"))
                    same &= (not h0.optimal) or abs(h0.weight_sum - b.weight_sum) < 1e-6
        worst_bnb = max(worst_bnb, max(t_bnb))
        def fmt(ts):
            if not ts:
                return "—"
            return f">{milp_limit:.0f} (limit)" if max(ts) == float("inf") else f"{max(ts):.2f}"

        kinds = ", ".join(sorted({kd for kd, _ in mats}))
        print(f"| {n} | {len(mats)} ({kinds}) | {max(t_bnb):.4f} | {max(nodes):,} | "
              f"{fmt(t_ref)} | {fmt(t_tight)} | {same} | {np.mean(gaps):.4f} / {np.max(gaps):.4f} |")
    print(f"\nWorst branch-and-bound time over the sweep: {worst_bnb * 1000:.1f} ms.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--neurons", type=int, default=50)
    ap.add_argument("--layers", default="0,15,29")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine a second thread mostly waits)")
    ap.add_argument("--milp-limit", type=float, default=30.0)
    ap.add_argument("--window", type=int, default=None, help="reference-en's window (default: NpmiConfig's)")
    args = ap.parse_args()
    if args.window is None:
        from analysis.topics import NpmiConfig

        args.window = NpmiConfig().window
    torch.set_num_threads(args.threads)
    import tempfile

    from analysis.models import load_model

    print(f"# Word-pool topics benchmark\n\ntorch threads {args.threads}, load average {os.getloadavg()[0]:.2f} "
          f"at start, {os.cpu_count()} CPUs")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        old, new = part_npmi(Path(tmp), args.window)
    from analysis.topics import TopicConfig

    subject = load_model("smollm2-135m")
    part_projection(subject)
    configs = [("old: enwiki-sample+lee-background, eps 0", old, TopicConfig(eps=0.0)),
               ("old corpus, eps 1e-12", old, TopicConfig(eps=1e-12)),
               ("new: reference-en (defaults)", new, TopicConfig())]
    stars, pools = part_topics(subject, configs, [int(x) for x in args.layers.split(",")], args.neurons)
    stats = new
    part_sweep(stars, pools, stats, args.milp_limit)
    print(f"\nTotal {time.perf_counter() - t_all:.0f} s, load average {os.getloadavg()[0]:.2f} at the end.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
