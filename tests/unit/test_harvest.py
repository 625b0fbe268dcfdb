"""The streaming harvest against brute force: every window run alone, every statistic recomputed with numpy/scipy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import scipy.stats
import torch

from analysis.activations import mlp_activations
from analysis.config import HarvestConfig
from analysis.harvest.driver import run_harvest
from analysis.harvest.kernels import batch_sums, random_keys
from analysis.harvest.summary import summarise
from analysis.histogram import HIST_BIN_EDGES
from analysis.models import load_model
from analysis.types import MLP, Window
from tests.helpers import ATOL, RTOL, assert_same_top

LAYERS = (0, 2)


@pytest.fixture(scope="module")
def subject(tiny_folders):
    return load_model(str(tiny_folders["llama"]))


@pytest.fixture(scope="module")
def windows(subject):
    rng = np.random.default_rng(0)
    V = len(subject.tokenizer)
    out = []
    for i in range(23):
        n = 16 if i % 5 else int(rng.integers(4, 16))  # some short (padded) windows
        ids = rng.integers(3, 40 if i % 3 else V, size=n)  # a small id range so tokens repeat
        out.append(Window(window_id=i * 3 + 1, doc_id=i // 4, offset=(i % 4) * 16, token_ids=tuple(int(t) for t in ids)))
    return out


@pytest.fixture(scope="module")
def brute(subject, windows):
    """Each window alone through the model: no batching, no padding."""
    acts = {}
    for w in windows:
        ids = torch.tensor([w.token_ids])
        a = mlp_activations(subject, ids, None, list(LAYERS))
        acts[w.window_id] = {l: a[l][0].numpy() for l in LAYERS}  # [T, N]
    return acts


CFG = HarvestConfig(layers=LAYERS, seq_len=16, top_k=5, random_k=4, quantile_bins=3, per_bin=2, pool=9,
                    batch_size=3, token_table=50, min_token_count=2, seed=7)


@pytest.fixture(scope="module", params=["cpu-path", "gpu-path"])
def summary(request, subject, windows):
    """The harvest on the CPU's path and on the GPU's (run on the CPU: no host syncs, gathers, torch sums)."""
    from analysis.harvest import kernels

    kernels.DEVICE_PATH_ON_CPU = request.param == "gpu-path"
    try:
        state, table_ids = run_harvest(subject, windows, CFG, progress=False)
        return {s.layer: s for s in summarise(state, table_ids)}, state
    finally:
        kernels.DEVICE_PATH_ON_CPU = False


def test_top_k_equals_brute_force(summary, windows, brute):
    summ, _ = summary
    for layer in LAYERS:
        s = summ[layer]
        N = s.mean.shape[0]
        maxima = np.array([[brute[w.window_id][layer][:, u].max() for u in range(N)] for w in windows])  # [W, N]
        wids = np.array([w.window_id for w in windows])
        for u in range(N):
            # the k largest window maxima, each held by the window named; the windows are brute force's where no
            # other window's maximum is within float32's reach (ties -- the same first token gives the same
            # activation -- and near-ties may be broken either way)
            assert_same_top(s.top_wid[:, u], s.top_val[:, u], wids, maxima[:, u])
            for rank, wid in enumerate(s.top_wid[:, u]):
                real = brute[int(wid)][layer][:, u]
                got = s.top_acts[rank, u, : len(real)].astype(np.float64)
                np.testing.assert_allclose(got, real, rtol=1e-3, atol=1e-3)  # float16 storage


def _float32_reach(values: np.ndarray) -> np.ndarray:
    """How far each brute-force value may be from the harvest's (a batched forward pass: float32 in another
    summation order), elementwise: 1e-5, relative above magnitude 1."""
    return np.maximum(ATOL, RTOL * np.abs(values))


def _moment_bounds(allv: np.ndarray) -> dict[str, np.ndarray]:
    """Per column, a first-order bound on how far the mean, the standard deviation, the skewness and the excess
    kurtosis move when every value moves by up to its float32 reach: sum_i |d stat / d x_i| * reach_i."""
    n, e = len(allv), _float32_reach(allv)
    d = allv - allv.mean(0)
    m2, m3, m4 = (d**2).mean(0), (d**3).mean(0), (d**4).mean(0)
    grads = {"mean": np.full_like(d, 1.0 / n), "std": d / (n * np.sqrt(m2)),
             "skewness": (3 * (d**2 - m2) / m2**1.5 - 3 * m3 * d / m2**2.5) / n,
             "kurtosis": (4 * (d**3 - m3) / m2**2 - 4 * m4 * d / m2**3) / n}
    return {k: (np.abs(g) * e).sum(0) for k, g in grads.items()}


def _assert_within(got, ref, tol, what: str) -> None:
    err = np.abs(np.asarray(got, dtype=np.float64) - ref)
    worst = int(np.argmax(err - tol))
    assert np.all(err <= tol), (what, worst, float(err[worst]), float(tol[worst]))


def test_moments_and_extremes_equal_scipy(summary, windows, brute):
    """The harvest's own arithmetic to rtol 1e-5 (mean, std) or 1e-4 (skewness, kurtosis), plus what its inputs'
    float32 reach can move each statistic."""
    summ, _ = summary
    for layer in LAYERS:
        s = summ[layer]
        allv = np.concatenate([brute[w.window_id][layer] for w in windows], 0).astype(np.float64)  # [n, N]
        assert s.n_tokens == allv.shape[0] == sum(len(w.token_ids) for w in windows)
        bound = _moment_bounds(allv)
        for name, ref, rtol, atol in (("mean", allv.mean(0), 1e-5, 1e-6), ("std", allv.std(0), 1e-5, 1e-6),
                                      ("skewness", scipy.stats.skew(allv, axis=0), 1e-4, 1e-5),
                                      ("kurtosis", scipy.stats.kurtosis(allv, axis=0), 1e-4, 1e-5)):
            _assert_within(getattr(s, name), ref, rtol * np.abs(ref) + atol + bound[name], name)
        np.testing.assert_allclose(s.vmin, allv.min(0), rtol=RTOL, atol=ATOL)  # a min or max moves as far as
        np.testing.assert_allclose(s.vmax, allv.max(0), rtol=RTOL, atol=ATOL)  # its values may
        # a value within its float32 reach of 0 may be positive in one computation and not in the other
        ref = (allv > 0).mean(0)
        _assert_within(s.frac_active, ref, 1e-7 * ref + (np.abs(allv) <= _float32_reach(allv)).mean(0), "frac")


LO, HI = np.abs(HIST_BIN_EDGES[:, 0]), np.abs(HIST_BIN_EDGES[:, 1])


def _bin(v: float) -> int:
    """The histogram bin of ``v`` by the bin table: float16's sign, then its magnitude's range."""
    v = float(np.float16(v))
    side = range(128, 256) if np.signbit(v) else range(0, 128)
    hits = [b for b in side if LO[b] <= abs(v) < HI[b]]
    assert len(hits) == 1, v
    return hits[0]


def _in_value_order(b: int) -> int:
    """Bins in the order of their values: the most negative (255) ... -0 (128), +0 (0) ... the largest (127)."""
    return b if b < 128 else 127 - b


def test_histogram_counts_every_token_in_the_right_bin(summary, windows, brute):
    """Every token counted once, in its value's bin; a value within float32's reach of a bin's edge may be counted
    on either side (each bin holds at least the values surely in it, at most those that may be)."""
    summ, _ = summary
    order = np.array([_in_value_order(b) for b in range(256)])
    for layer in LAYERS:
        s = summ[layer]
        allv = np.concatenate([brute[w.window_id][layer] for w in windows], 0).astype(np.float64)
        reach = _float32_reach(allv)
        for u in range(0, allv.shape[1], 7):
            surely, maybe = np.zeros(256, dtype=np.int64), np.zeros(256, dtype=np.int64)
            for v, e in zip(allv[:, u], reach[:, u]):
                lo, hi = _in_value_order(_bin(v - e)), _in_value_order(_bin(v + e))
                bins = np.nonzero((order >= lo) & (order <= hi))[0]
                maybe[bins] += 1
                if len(bins) == 1:
                    surely[bins] += 1
            assert s.hist[u].sum() == len(allv) and surely.sum() >= 0.9 * len(allv)
            assert np.all(surely <= s.hist[u]) and np.all(s.hist[u] <= maybe), (u, s.hist[u], surely, maybe)


@pytest.mark.parametrize("compiled", [True, False])
def test_batch_sums_equal_numpy_in_float64(compiled):
    """One batch's sums against numpy in float64: the compiled CPU path (float64 sums, exact centring) to 1e-9,
    the torch path (float32, a GPU's) to 1e-4; odd widths (columns split between threads), one row, a large
    offset (centring), exact and negative zeros and tiny positives (counted as > 0 in float32, binned in
    float16's bin 0); the histogram is added to what it held."""
    rng = np.random.default_rng(3)
    for n, N, offset in ((1, 1, 0.0), (5, 3, 0.0), (300, 37, 1000.0), (2048, 130, -3.5)):
        x = (rng.standard_normal((n, N)) * rng.uniform(0.01, 10, size=N) + offset).astype(np.float32)
        special = rng.random((n, N))
        x[special < 0.1] = 0.0
        x[(special >= 0.1) & (special < 0.15)] = -0.0
        x[(special >= 0.15) & (special < 0.2)] = 1e-30
        flat = torch.from_numpy(x)
        hist = torch.zeros(N, 256, dtype=torch.int64)
        hist[:, 5] = 7
        mean, m2, m3, m4, n_pos = batch_sums(flat, flat.half(), hist, compiled=compiled)
        xd = x.astype(np.float64)
        mu = xd.mean(0)
        d = xd - mu
        sd = np.maximum(d.std(0), 1e-12)
        tol = 1e-9 if compiled else 1e-4
        np.testing.assert_allclose((mean.numpy() - mu) / np.maximum(sd, np.abs(mu)), 0, atol=tol)
        for k, got in ((2, m2), (3, m3), (4, m4)):
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy() / (n * sd**k), (d**k).sum(0) / (n * sd**k), rtol=tol, atol=tol)
        np.testing.assert_array_equal(n_pos.numpy(), (x > 0).sum(0))
        bins = x.astype(np.float16).view(np.uint16) >> 8
        expected = np.stack([np.bincount(bins[:, j], minlength=256) for j in range(N)])
        expected[:, 5] += 7
        np.testing.assert_array_equal(hist.numpy(), expected)


def test_random_sample_is_the_bottom_keys_and_quantiles_respect_bins(summary, windows):
    summ, _ = summary
    wids = torch.tensor([w.window_id for w in windows])
    for layer in LAYERS:
        s = summ[layer]
        N = s.mean.shape[0]
        keys = random_keys(CFG.seed, layer, N, wids).numpy()  # [W, N]
        for u in range(N):
            expect = wids.numpy()[np.argsort(keys[:, u], kind="stable")[: CFG.random_k]]
            got = s.pool_wid[s.random_idx[:, u], u]
            assert list(got) == list(expect)
            for b in range(CFG.quantile_bins):
                lo = -np.inf if b == 0 else s.quantile_boundaries[b - 1, u]
                hi = np.inf if b == CFG.quantile_bins - 1 else s.quantile_boundaries[b, u]
                for p in s.quantile_idx[b, :, u]:
                    if p >= 0:
                        assert lo <= s.pool_max[p, u] < hi or (b == CFG.quantile_bins - 1 and s.pool_max[p, u] >= lo)
        # random samples differ between units (independent per unit)
        assert len({tuple(s.pool_wid[s.random_idx[:, u], u]) for u in range(N)}) > N // 2


def test_token_means_equal_brute_force(summary, windows, brute):
    summ, _ = summary
    occurrences: dict[int, list[tuple[int, int]]] = {}
    for w in windows:
        for pos, t in enumerate(w.token_ids):
            occurrences.setdefault(t, []).append((w.window_id, pos))
    for layer in LAYERS:
        tm = summ[layer].token_means
        assert len(tm)
        for unit, token, mean, count in list(zip(tm.unit, tm.token_id, tm.mean, tm.count))[:200]:
            occ = occurrences[token]
            assert count == len(occ) >= CFG.min_token_count
            values = np.array([brute[wid][layer][pos, unit] for wid, pos in occ], dtype=np.float64)
            # the harvest's float32 sums to 1e-5, plus the float32 reach of the values averaged
            assert mean == pytest.approx(values.mean(), rel=1e-5, abs=float(_float32_reach(values).mean()))


def test_a_pass_of_some_layers_equals_those_layers_of_a_pass_of_all(subject, windows, summary, request, monkeypatch):
    """Passes split a model's layers: a layer's state is the same whichever layers share its pass (on the CPU's
    path and the GPU's)."""
    from analysis.harvest import kernels

    monkeypatch.setattr(kernels, "DEVICE_PATH_ON_CPU", request.node.callspec.params["summary"] == "gpu-path")
    _summaries, state = summary
    alone, _ = run_harvest(subject, windows, replace(CFG, layers=(LAYERS[-1],)), progress=False)
    a, b = alone.layers[(MLP, LAYERS[-1])], state.layers[(MLP, LAYERS[-1])]
    for f, v in vars(a).items():
        assert (torch.equal(v, getattr(b, f)) if torch.is_tensor(v) else v == getattr(b, f)), f
    assert torch.equal(alone.tok_count, state.tok_count)


def test_state_checkpoint_round_trip(tmp_path, subject, windows):
    from analysis.harvest.driver import load_checkpoint, save_checkpoint

    state, _ = run_harvest(subject, windows[:6], CFG, progress=False)
    path = tmp_path / "ck.pt"
    save_checkpoint(state, path, "run1")
    back = load_checkpoint(path, "run1", CFG, "cpu")
    assert back is not None and back.windows_done == state.windows_done == 6
    assert torch.equal(back.layers[(MLP, 2)].top_acts, state.layers[(MLP, 2)].top_acts)
    assert load_checkpoint(path, "other-run", CFG, "cpu") is None


def test_checkpoints_take_at_most_a_share_of_the_time_and_resume_bit_identically(tmp_path, subject, windows,
                                                                                  monkeypatch):
    """With checkpoint_seconds 0 a pass saves after every batch (but the last); a save that takes long against its
    batches (a GPU's) is not repeated before CHECKPOINT_SHARE times its duration. A pass resumed from a save folds
    the same batches in the same order: its state equals the uninterrupted one's, bit for bit."""
    import time

    from analysis.harvest import driver

    saved, real_save = [], driver.save_checkpoint
    cfg = replace(CFG, checkpoint_seconds=0.0)

    def timed_save(state, path, run_id):
        if delay:
            real_save(state, path, run_id)
            time.sleep(delay)
        saved.append(state.windows_done)

    monkeypatch.setattr(driver, "save_checkpoint", timed_save)
    delay = 0.0  # a save that takes no time
    (tmp_path / "a").mkdir()
    whole, _ = run_harvest(subject, windows, cfg, checkpoint=tmp_path / "a", run_id="a", progress=False)
    assert saved[:-1] == list(range(3, len(windows), 3)) and saved[-1] == len(windows)  # and the whole pass
    saved.clear()
    delay = 2.0  # the batches take milliseconds: after the first save, none is due before the end
    (tmp_path / "b").mkdir()
    run_harvest(subject, windows, cfg, checkpoint=tmp_path / "b", run_id="b", progress=False)
    assert saved == [3, len(windows)]
    (tmp_path / "c").mkdir()  # a pass killed after its first save
    calls = []

    def first_only(state, path, run_id):
        if not calls:
            real_save(state, path, run_id)
        calls.append(state.windows_done)

    monkeypatch.setattr(driver, "save_checkpoint", first_only)
    run_harvest(subject, windows, cfg, checkpoint=tmp_path / "c", run_id="c", progress=False)
    monkeypatch.setattr(driver, "save_checkpoint", real_save)
    ckpt = next((tmp_path / "c").glob("*.pt"))
    assert driver.load_checkpoint(ckpt, ckpt.stem, cfg, "cpu").windows_done == 3
    resumed, _ = run_harvest(subject, windows, cfg, checkpoint=tmp_path / "c", run_id="c", progress=False)
    for key, st in whole.layers.items():  # resumed after window 3
        for f, v in vars(st).items():
            other = getattr(resumed.layers[key], f)
            assert torch.equal(v, other) if torch.is_tensor(v) else v == other, (key, f)
