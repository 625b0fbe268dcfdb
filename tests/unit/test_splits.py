"""analysis/splits.py against the interleaving rules written out literally, on synthetic unit records whose
random sample repeats top windows; and the invariants: nothing scored was trained on, splits are disjoint."""

from __future__ import annotations

import random

import pytest

from analysis.splits import N2G_HEAD, SCORING_SETS, calibration, explainer_train, n2g_train_test, scoring_records
from analysis.types import ActivationRecord, UnitId, UnitRecord, UnitStats


def _record(window_id: int) -> ActivationRecord:
    return ActivationRecord(tokens=[f"t{window_id}"], activations=[float(window_id)], token_ids=[window_id],
                            window_id=window_id, doc_id=0, offset=window_id)


def _unit(n_top: int, n_random: int, seed: int) -> UnitRecord:
    """Top windows 0..n_top-1; a random sample of distinct windows drawn from 0..2 n_top + 9, so it repeats top
    windows of every split (0::4, 1::4, 2::4, 3::4) as well as holding windows that are not top ones."""
    rng = random.Random(seed)
    pool = list(range(2 * n_top + 10))
    rng.shuffle(pool)
    stats = UnitStats(n_tokens=1, mean=0.0, std=0.0, skewness=0.0, kurtosis=0.0, min=0.0, max=1.0, frac_active=1.0,
                      hist_counts=[], hist_edges=[])
    return UnitRecord(model_id="m", corpus_id="c", run_id="r", unit=UnitId("mlp", 0, 0), hook_point="h", stats=stats,
                      most_positive_activation_records=[_record(w) for w in range(n_top)],
                      random_sample=[_record(w) for w in pool[:n_random]], random_sample_by_quantile=[],
                      quantile_boundaries=[])


# ---- the rules as they were written before analysis/splits.py (evaluate.py and n2g/pipeline.py) ----

def old_train_records(rec):
    return rec.most_positive_activation_records[0::4]


def old_scoring_records(rec, scoring_set, n=5):
    top = rec.most_positive_activation_records
    seen = {r.window_id for r in top[0::4] + top[1::4]}
    rnd = [r for r in rec.random_sample if r.window_id not in seen]
    if scoring_set == "top-and-random":
        return top[2::4][:n] + rnd[1::3][:n]
    return (rnd[1::3] + rnd[2::3])[: 2 * n]


def old_split_records(rec):
    top = rec.most_positive_activation_records
    return top[0::4] + top[1::4], top[2::4] + top[3::4]


UNITS = [_unit(n_top, n_random, seed) for n_top in (0, 3, 7, 20, 21) for n_random in (0, 5, 20, 33)
         for seed in range(3)]
BIG = [_unit(n_top, 60, seed) for n_top in (33, 40) for seed in range(3)]
"""Harvests with a top-k above N2G_HEAD: Neuron2Graph's extra train records."""


def _ids(records) -> set[int]:
    return {r.window_id for r in records}


def test_the_synthetic_random_samples_repeat_top_windows_of_every_split():
    big = [u for u in UNITS if len(u.most_positive_activation_records) == 20 and len(u.random_sample) == 33]
    top = big[0].most_positive_activation_records
    for k in range(4):
        assert any(_ids(u.random_sample) & _ids(top[k::4]) for u in big)


@pytest.mark.parametrize("n", [1, 5, 10])
def test_splits_equal_the_old_rules(n):
    for rec in UNITS:
        if len(rec.most_positive_activation_records) <= N2G_HEAD:  # the old rules covered every top record
            assert explainer_train(rec) == old_train_records(rec)
            train, extra, test = n2g_train_test(rec, extra=5)
            assert (train, test) == old_split_records(rec) and extra == []
        for scoring_set in SCORING_SETS:
            assert scoring_records(rec, scoring_set, n) == old_scoring_records(rec, scoring_set, n)
    assert SCORING_SETS == ("top-and-random", "random-only")


def test_calibration_is_top_1_of_4_and_random_0_of_3_of_the_unseen_random_sample():
    for rec in UNITS + BIG:
        top = rec.most_positive_activation_records
        head = top[:20]
        unseen = [r for r in rec.random_sample if r.window_id not in _ids(head[0::4] + head[1::4] + top[20:])]
        assert calibration(rec) == head[1::4] + unseen[0::3]


def test_the_explainer_sees_the_first_20s_records_whatever_the_top_k():
    """Top records past the first 20 are Neuron2Graph's extra train records only: the explainer and the
    calibration see what a top-20 harvest gives them (5 records each)."""
    for rec in BIG + [u for u in UNITS if len(u.most_positive_activation_records) > 20]:
        head = rec.most_positive_activation_records[:20]
        assert explainer_train(rec) == head[0::4] and len(explainer_train(rec)) == 5
        assert calibration(rec)[:5] == head[1::4]


def test_no_scored_record_is_a_train_window():
    for rec in UNITS + BIG:
        n2g_train, n2g_extra, n2g_test = n2g_train_test(rec, extra=100)
        n2g_train = n2g_train + n2g_extra
        trained = _ids(explainer_train(rec)) | _ids(n2g_train)
        for scoring_set in SCORING_SETS:
            for n in (1, 5, 100):
                assert not _ids(scoring_records(rec, scoring_set, n)) & trained
        assert not _ids(n2g_test) & _ids(n2g_train)
        assert not _ids(calibration(rec)) & _ids(explainer_train(rec))


def test_top_and_random_parts_partition_their_lists():
    """Top 0::4 / 1::4 / 2::4 / 3::4 partition the top records; random calibration (0::3) / valid (1::3) /
    test (2::3) partition the random sample less the train windows; N2G's train = explainer train + calibration
    top records."""
    for rec in UNITS:
        top = rec.most_positive_activation_records
        n_cal_top = len(top[1::4])
        cal_random = calibration(rec)[n_cal_top:]
        valid_random = scoring_records(rec, "top-and-random", n=10**6)[len(top[2::4]):]
        valid_and_test_random = scoring_records(rec, "random-only", n=10**6)
        test_random = valid_and_test_random[len(valid_random):]
        assert valid_and_test_random[: len(valid_random)] == valid_random
        parts = [_ids(cal_random), _ids(valid_random), _ids(test_random)]
        assert sum(map(len, parts)) == len(set().union(*parts))
        unseen = _ids(rec.random_sample) - _ids(top[0::4] + top[1::4])
        assert set().union(*parts) == unseen
        quarters = [_ids(top[k::4]) for k in range(4)]
        assert sum(map(len, quarters)) == len(top) and set().union(*quarters) == _ids(top)
        n2g_train, n2g_extra, n2g_test = n2g_train_test(rec, extra=100)
        assert _ids(n2g_train) == _ids(explainer_train(rec)[:5]) | _ids(calibration(rec)[:n_cal_top][:5])
        assert _ids(n2g_train) | _ids(n2g_test) == _ids(top[:N2G_HEAD])
        assert _ids(n2g_train) | _ids(n2g_extra) | _ids(n2g_test) == _ids(top)


def test_extra_n2g_records_are_the_top_records_past_the_head_and_leave_the_held_out_set_alone():
    for rec in BIG:
        top = rec.most_positive_activation_records
        head = top[:20]
        for extra in (0, 1, 10, 100):
            train, more, test = n2g_train_test(rec, extra)
            assert train == head[0::4] + head[1::4] and test == head[2::4] + head[3::4]  # as with a top-20 harvest
            assert more == top[20 : 20 + extra] and len(more) == min(extra, len(top) - 20)
            assert not _ids(train + more) & _ids(test)
        # what a random split scores on is none of them, whatever extra a graph was fitted with
        scored = _ids(scoring_records(rec, "top-and-random", 100)) | _ids(scoring_records(rec, "random-only", 100))
        assert not scored & _ids(top[0::4] + top[1::4] + top[20:])
        assert _ids(rec.random_sample) & _ids(top[20:])  # the sample does repeat extra windows (they were removed)


def test_scoring_sets_have_at_most_2n_records_and_unknown_sets_are_refused():
    rec = _unit(20, 33, 0)
    assert len(scoring_records(rec, "top-and-random", 5)) == 10
    assert len(scoring_records(rec, "random-only", 5)) <= 10
    with pytest.raises(ValueError, match="unknown scoring set"):
        scoring_records(rec, "valid")
