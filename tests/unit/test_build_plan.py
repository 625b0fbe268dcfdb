"""The build command's plan and budget arithmetic."""

from __future__ import annotations

import pytest

from analysis.jobs.build.plan import BuildJob, parse_budget, plan, plan_lines, PROJECT_DISK, PROJECT_GPU, PROJECT_VM, spread
from analysis.types import UserError


def test_budget_and_spread():
    assert parse_budget("2h") == 7200 and parse_budget("90m") == 5400 and parse_budget("600") == 600
    assert parse_budget(None) is None
    with pytest.raises(UserError, match="--budget"):
        parse_budget("two hours")
    layers = list(range(30))
    assert spread(layers, 3) == [0, 14, 29] and spread(layers, 1) == [15] and spread(layers, 0) == []
    assert spread(layers, 40) == layers and len(spread(layers, 7)) == 7


def test_plan_keeps_the_cheap_lenses_and_spreads_the_rest():
    units = {lens: 1000 for lens in PROJECT_VM}
    costs = {"harvest": 0.0, "baselines": 0.01, "topics": 0.1, "n2g": 1.0}  # seconds per unit
    job = BuildJob(layers="all", lenses=("harvest", "baselines", "topics", "n2g"), budget="1h")
    stages, dropped = plan(job, 30, units, 10_000, costs, 3600)
    by = {s.lens: s for s in stages}
    # cheap: 30 x 1,000 x 0.01 = 300 s; topics 100 s a layer: all 30 fit (3,000 s); 300 s left: no n2g layer
    assert by["baselines"].layers == by["topics"].layers == list(range(30))
    assert by["n2g"].layers == [] and dropped["n2g"] == list(range(30)) and sum(s.seconds for s in stages) == 3300
    stages, dropped = plan(job, 30, units, 10_000, costs, 3300 + 3 * 1000)
    assert {s.lens: s for s in stages}["n2g"].layers == [0, 14, 29] and len(dropped["n2g"]) == 27
    stages, dropped = plan(job, 30, units, 10_000, costs, 1000)
    assert {s.lens: s for s in stages}["topics"].layers == spread(list(range(30)), 7) and "n2g" in dropped
    stages, dropped = plan(job, 30, units, 10_000, costs, None)
    assert not dropped and all(s.basis == "measured" for s in stages)
    with pytest.raises(UserError, match="cheap lenses .* alone need"):
        plan(job, 30, units, 10_000, costs, 60)
    with pytest.raises(UserError, match="--lenses"):
        plan(BuildJob(lenses=("harvest", "colour")), 30, units, 10_000, costs, None)


def test_plan_charges_a_one_time_cost_once_before_the_layers():
    """Counting the topics' reference statistics is paid once, whatever the units: in the stage's estimate, and
    under a budget before any layer fits."""
    units = {lens: 1000 for lens in PROJECT_VM}
    costs = {"harvest": 0.0, "baselines": 0.0, "topics": 0.1}  # 100 s a layer
    job = BuildJob(layers="all", lenses=("harvest", "baselines", "topics"))
    by = {s.lens: s for s in plan(job, 30, units, 10_000, costs, None, once={"topics": 240.0})[0]}
    assert by["topics"].seconds == pytest.approx(30 * 100 + 240) and by["baselines"].seconds == 0
    stages, dropped = plan(job, 30, units, 10_000, costs, 740, once={"topics": 240.0})
    topics = {s.lens: s for s in stages}["topics"]
    assert topics.layers == spread(list(range(30)), 5) and topics.seconds == pytest.approx(740)
    stages, dropped = plan(job, 30, units, 10_000, costs, 200, once={"topics": 240.0})  # not even the statistics
    assert {s.lens: s for s in stages}["topics"].seconds == 0 and dropped["topics"] == list(range(30))
    assert by["topics"].seconds - 240 == pytest.approx(plan(job, 30, units, 10_000, costs, None)[0][2].seconds)


def test_plan_of_the_expensive_lenses_on_some_layers_and_units():
    units = {"harvest": 1000, "baselines": 1000, "topics": 16, "n2g": 16}
    job = BuildJob(layers="all", expensive_layers="0,15,29", lenses=("harvest", "baselines", "topics", "n2g"))
    by = {s.lens: s for s in plan(job, 30, units, 10_000, {}, None)[0]}
    assert by["baselines"].layers == list(range(30)) and by["baselines"].units == 30_000
    assert by["n2g"].layers == by["topics"].layers == [0, 15, 29] and by["n2g"].units == 48
    assert by["n2g"].seconds == pytest.approx(48 * PROJECT_VM["n2g"])
    assert by["n2g"].bytes == pytest.approx(48 * PROJECT_DISK["n2g"])
    assert by["harvest"].bytes == pytest.approx(30_000 * PROJECT_DISK["harvest"])  # per harvested neuron
    by = {s.lens: s for s in plan(job, 30, units, 10_000, {}, None, ("harvest",), {"n2g": 10.0})[0]}
    assert by["n2g"].bytes == 480 and by["harvest"].bytes == 0 and by["harvest"].basis == "done"
    with pytest.raises(UserError, match="--expensive-layers"):
        plan(BuildJob(layers="0-9", expensive_layers="20"), 30, units, 10_000, {}, None)


def test_a_gpu_plan_takes_the_gpu_numbers_where_there_are_some():
    """--device cuda with nothing measured here: the harvest and n2g at the H200's seconds per unit, the lenses
    never measured on a GPU at the VM's, and this machine's own measurements before either."""
    units = {"harvest": 1000, "baselines": 1000, "topics": 16, "n2g": 16}
    job = BuildJob(layers="all", expensive_layers="15,29", lenses=("harvest", "baselines", "topics", "n2g"),
                   device="cuda")
    by = {s.lens: s for s in plan(job, 30, units, 10_000, {}, None)[0]}
    assert by["n2g"].seconds == pytest.approx(32 * PROJECT_GPU["n2g"]) and by["n2g"].basis == "H200"
    # the project's harvest rate is SmolLM2's: another model's harvest scales with the units it harvests
    assert by["harvest"].seconds == pytest.approx(10_000 * PROJECT_GPU["harvest"] * 30 * 1000 / (30 * 1536))
    assert by["harvest"].basis == "H200"
    assert by["topics"].seconds == pytest.approx(32 * PROJECT_VM["topics"]) and by["topics"].basis == "VM"
    by = {s.lens: s for s in plan(job, 30, units, 10_000, {"n2g": 0.5}, None)[0]}
    assert by["n2g"].seconds == pytest.approx(16.0) and by["n2g"].basis == "measured"
    assert "H200 = one NVIDIA H200" in plan_lines(list(by.values()), {}, None)[0]
