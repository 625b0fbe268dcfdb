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

    python bench/topics.py [--neurons 50] [--layers 0,15,29] [--threads 1] [--milp-limit 30]
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402


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


def part_npmi(tmp: Path):
    from analysis.corpus import load_corpus
    from analysis.topics import count_cooccurrences, load_stats, reference_stats, save_stats

    t0 = time.perf_counter()
    stats = reference_stats(progress=False)
    t_ours = time.perf_counter() - t0
    path = save_stats(stats, tmp / "npmi.npz")
    t0 = time.perf_counter()
    load_stats(path)
    t_load = time.perf_counter() - t0
    lee = [d.text for d in load_corpus("lee-background").documents]
    t0 = time.perf_counter()
    lee_stats = count_cooccurrences(lee, "lee", progress=False)
    t_lee = time.perf_counter() - t0
    t0 = time.perf_counter()
    single, pair, n_windows = python_loop_counts(lee, 10, set(lee_stats.vocab))
    t_loop = time.perf_counter() - t0
    assert n_windows == lee_stats.n_windows and sum(pair.values()) == int(lee_stats.pair_counts.sum())
    print("\n### NPMI counts (window 10, min_count 5)\n")
    print("| corpus | words | windows | vocabulary | pairs stored | ours | pure-Python loop | file | load |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {stats.corpus_id} | {stats.n_words:,} | {stats.n_windows:,} | {len(stats.vocab):,} | "
          f"{stats.pair_counts.nnz:,} | {t_ours:.2f} s | — | {path.stat().st_size / 2**20:.1f} MiB | {t_load:.2f} s |")
    print(f"| lee-background | {lee_stats.n_words:,} | {lee_stats.n_windows:,} | {len(lee_stats.vocab):,} | "
          f"{lee_stats.pair_counts.nnz:,} | {t_lee:.2f} s | {t_loop:.2f} s ({t_loop / t_lee:.0f}x) | | |")
    return stats


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


def part_topics(subject, stats, layers, n_neurons):
    from analysis.topics import TopicConfig, project_rankings, random_topic_scores, topics_from_ranking

    rng = np.random.default_rng(0)
    config = TopicConfig()
    stars, pools = [], []
    print(f"\n### Topics, {n_neurons} random neurons per layer, both polarities (k = 10, tau = 900, "
          f"theta = [0.1, 1], kappa_u = 32)\n")
    print("| layer | mode | neuron-polarities | with a topic (pos / neg) | pool words (mean) | stars (mean) | "
          "best topic NPMI (mean) | random 10-sets NPMI (mean) | best > random p95 | all optimal | "
          "projection s (all) | topic stage s per neuron-polarity (mean / max) | solve s (max star) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    examples = []
    for layer in layers:
        neurons = sorted(rng.choice(subject.info.d_mlp, size=n_neurons, replace=False).tolist())
        for mode in ("hi-i", "hi-c"):
            t0 = time.perf_counter()
            rankings = project_rankings(subject, layer, mode, neurons, tau=config.tau)
            t_proj = time.perf_counter() - t0
            results, per = [], []  # per: pool + NPMI + stars + solving, per neuron-polarity
            for rk in rankings:
                t1 = time.perf_counter()
                results.append(topics_from_ranking(rk, subject.tokenizer, stats, config))
                per.append(time.perf_counter() - t1)
            best, rand_mean, beats = [], [], []
            solve_max = 0.0
            for r in results:
                stars.extend(s.npmi for s in r.stars)
                pools.append(r.pool.words)
                solve_max = max([solve_max] + [t.stats.seconds for t in r.topics])
                if r.topics:
                    rnd = random_topic_scores(r.pool.words, stats, k=10, n_draws=200, seed=1)
                    best.append(r.topics[0].score)
                    rand_mean.append(rnd.mean())
                    beats.append(r.topics[0].score > np.percentile(rnd, 95))
                    if len(examples) < 6 and r.topics[0].score > -0.2:
                        examples.append((layer, mode, r.unit.index, r.polarity.value, r.topics[0], rnd))
            n = len(results)
            with_topic = "{} / {}".format(*(sum(1 for r in results if r.topics and r.polarity.value == p)
                                            for p in ("pos", "neg")))
            print(f"| {layer} | {mode} | {n} | {with_topic} | {np.mean([len(r.pool.words) for r in results]):.0f} | "
                  f"{np.mean([len(r.stars) for r in results]):.1f} | "
                  f"{np.mean(best) if best else np.nan:.3f} | {np.mean(rand_mean) if rand_mean else np.nan:.3f} | "
                  f"{sum(beats)}/{len(beats)} | {all(t.optimal for r in results for t in r.topics)} | "
                  f"{t_proj:.2f} | {np.mean(per):.3f} / {max(per):.3f} | {solve_max:.3f} |")
    print("\nExamples (best topic of a neuron-polarity, its NPMI, and the random draws' mean / max):\n")
    for layer, mode, unit, pol, topic, rnd in examples:
        print(f"- L{layer} N{unit} {mode} {pol}: {' '.join(topic.words)} — {topic.score:.3f} "
              f"(random {rnd.mean():.3f} / {rnd.max():.3f})")
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
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import tempfile

    from analysis.models import load_model

    print(f"# Word-pool topics benchmark\n\ntorch threads {args.threads}, load average {os.getloadavg()[0]:.2f} "
          f"at start, {os.cpu_count()} CPUs")
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        stats = part_npmi(Path(tmp))
    subject = load_model("smollm2-135m")
    part_projection(subject)
    stars, pools = part_topics(subject, stats, [int(x) for x in args.layers.split(",")], args.neurons)
    part_sweep(stars, pools, stats, args.milp_limit)
    print(f"\nTotal {time.perf_counter() - t_all:.0f} s, load average {os.getloadavg()[0]:.2f} at the end.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
