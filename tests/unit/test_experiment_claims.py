"""Claim verdicts: each one holds on numbers built to hold it and fails on numbers (and on a
run) built to fail it; the 95% t-interval they rest on, by hand."""

from __future__ import annotations

import dataclasses
import math

import pytest

from dlrm_core.experiment import claims as c
from dlrm_core.experiment.results import build_results
from dlrm_core.experiment.run_summary import summarise_run
from dlrm_core.experiment.stats import t975, t_interval

from .test_experiment_harness import small_run


def test_t_interval_by_hand() -> None:
    ci = t_interval([1.0, 2.0, 3.0])
    assert ci is not None and ci.mean == 2.0 and ci.n == 3
    # sd 1, t(0.975, 2) = 4.303: half width 4.303 / sqrt(3)
    assert ci.hi - 2.0 == pytest.approx(4.303 / math.sqrt(3))
    assert t_interval([None, float("nan")]) is None
    one = t_interval([0.5])
    assert one is not None and one.lo == one.hi == 0.5
    assert t975(1) == 12.706 and t975(35) == 2.042 and t975(1000) == 1.96


@pytest.mark.parametrize(
    ("gains", "verdict", "held"),
    [
        ([0.10, 0.12, 0.14], c.WITHIN, True),  # CI 0.07..0.17 inside +0.04..0.24
        ([0.44, 0.46, 0.48], c.ABOVE, False),  # one seed's +0.46% used to count as "held"
        ([0.010, 0.012, 0.014], c.BELOW, False),
        ([-1.0, 6.0, 0.5], c.NOT_SIGNIFICANT, False),  # per-window -1%..+6%: CI holds 0
        ([0.46], c.NOT_SIGNIFICANT, False),  # one replicate: no interval
        # CI +0.05..+0.55: it meets the range but reaches past +0.24 (was "within")
        ([0.2, 0.3, 0.4], c.NOT_SIGNIFICANT, False),
        # CI +0.005..+0.055: it meets the range but reaches below +0.04 (was "within")
        ([0.02, 0.03, 0.04], c.NOT_SIGNIFICANT, False),
        # CI -0.041..+0.035: it holds 0, but no gain in it reaches +0.04 (was "not significant")
        ([-0.02, 0.0, 0.01], c.BELOW, False),
    ],
)
def test_accuracy_verdicts(gains: list[float], verdict: str, held: bool) -> None:
    v = c.accuracy_verdict(gains, "seeds")
    assert (v.verdict, v.held) == (verdict, held)
    assert v.interval is not None and v.interval["n"] == len(gains)
    assert (v.why == "") == held


def _cost(delta: float, live: float) -> c.FleetCost:
    return c.FleetCost(delta, live, 1e6, 0.0, 4)


def test_cost_verdicts() -> None:
    assert c.cost_verdict([_cost(30, 10), _cost(32, 10), _cost(31, 10)]).verdict == c.HELD
    failed = c.cost_verdict([_cost(12, 10), _cost(13, 10), _cost(12.5, 10)])
    assert failed.verdict == c.NOT_HELD and failed.held is False and "1/2" in failed.why
    unsure = c.cost_verdict([_cost(15, 10), _cost(30, 10)])
    assert unsure.verdict == c.NOT_SIGNIFICANT and unsure.held is False
    assert c.cost_verdict([]).held is None


def test_memory_verdict_is_the_measured_bytes_not_the_budget() -> None:
    tables = 10**6
    ok = c.memory_verdict([c.MemoryAccount(15_000, 14_000, tables, None)])
    assert ok.verdict == c.HELD and ok.held
    # the budget's formula says 1.9%, the node's tensors measure 2.5%: not held
    over = c.memory_verdict([c.MemoryAccount(25_000, 19_000, tables, 2**30)])
    assert over.verdict == c.NOT_HELD and over.held is False
    assert "2.500%" in (over.measured or "") and "formula stays under" in over.why
    # the worst node decides
    fleet = [c.MemoryAccount(1_000, 1_000, tables, None), c.MemoryAccount(30_000, 1, tables, None)]
    assert c.memory_verdict(fleet).held is False


def test_claims_on_a_run_built_to_fail_them() -> None:
    """Tiny tables, every claim judged on a real run. The cost verdict is CPU time, not asserted
    (2.4x in LiveUpdate's favour since the frozen head; not held before). Its memory, walked (at
    every new peak of its account too), stays under 2%: the budget caps every tensor the walk
    finds (it once read over 2%, the rank controllers' gradient Grams outside the budget; the
    verdict on fed numbers over the budget: test_memory_verdict_is_the_measured_bytes_not_the_
    budget). Its account reads above the walk here (2.02% against 1.90%, not attributed)."""
    run = small_run(("delta_sync", "liveupdate"), events=4_000)
    results = build_results([summarise_run(run)], {"name": "synthetic"})
    memory, cost, accuracy = results["claims"]
    live = results["strategies"]["liveupdate"]
    assert 0 < live["peak_measured_memory_pct"] < 2.0 and live["peak_memory_overhead_pct"] > 0
    assert memory["verdict"] == c.HELD
    assert cost["verdict"] in (c.HELD, c.NOT_HELD) and cost["interval"]["n"] == 1
    assert accuracy["verdict"] in (c.WITHIN, c.ABOVE, c.BELOW, c.NOT_SIGNIFICANT)
    assert "windows of one seed" in accuracy["measured"]


def test_frontier_reading_reports_whole_points_never_a_mix_of_two() -> None:
    from dlrm_core.experiment.results import frontier_reading

    def row(period: float, auc: dict, bytes_h: dict, cpu_h: dict) -> dict:  # type: ignore[type-arg]
        return {"sync_period_s": period, "mean_auc": auc, "bytes_per_hour": bytes_h,
                "cpu_seconds_per_hour": cpu_h}  # fmt: skip

    frontier = [
        row(120, {"delta_sync": 0.70, "hybrid": 0.71}, {"delta_sync": 100, "hybrid": 80},
            {"delta_sync": 10, "hybrid": 30}),
        row(600, {"delta_sync": 0.68, "hybrid": 0.695}, {"delta_sync": 40, "hybrid": 20},
            {"delta_sync": 8, "hybrid": 25}),
        row(1800, {"delta_sync": 0.66, "hybrid": 0.685}, {"delta_sync": 20, "hybrid": 10},
            {"delta_sync": 6, "hybrid": 40}),
    ]  # fmt: skip
    fast, slow, _ = frontier_reading(frontier)
    # at 2 min only the hybrid's 2-min point reaches 0.70: 80/100 bytes, 30/10 CPU
    only = {"sync_period_s": 120, "auc": 0.71, "bytes_ratio": 0.8, "cpu_ratio": 3.0}
    assert fast["hybrid"] == {"cheapest_bytes": only, "cheapest_cpu": only}
    # at 10 min all three hybrid points reach 0.68. The fewest bytes are the 30-min point's
    # (10 B/h, at 40 CPU-s/h), the least CPU the 10-min point's (25 CPU-s/h, at 20 B/h):
    # each is read as a whole point, never 10 B/h with 25 CPU-s/h (a point that was not run)
    assert slow["hybrid"]["cheapest_bytes"] == {
        "sync_period_s": 1800,
        "auc": 0.685,
        "bytes_ratio": 10 / 40,
        "cpu_ratio": 40 / 8,
    }
    assert slow["hybrid"]["cheapest_cpu"] == {
        "sync_period_s": 600,
        "auc": 0.695,
        "bytes_ratio": 20 / 40,
        "cpu_ratio": 25 / 8,
    }
    for r in frontier:
        r["mean_auc"]["hybrid"] = 0.60
    assert frontier_reading(frontier)[0]["hybrid"] is None


@pytest.fixture(scope="module")
def live_run():  # noqa: ANN201
    return summarise_run(small_run(("delta_sync", "liveupdate"), events=4_000))


@pytest.mark.parametrize(
    ("gains", "verdict"),
    [
        ([0.10, 0.12, 0.14], c.WITHIN),
        ([0.44, 0.46, 0.48], c.ABOVE),
        ([-0.9, -0.7, -0.8], c.BELOW),
        ([-0.3, 0.2, 0.4], c.NOT_SIGNIFICANT),
    ],
)
def test_each_accuracy_verdict_on_seeds_built_for_it(live_run, gains, verdict) -> None:  # noqa: ANN001
    """Three seeds' runs whose liveupdate gains are set to land the interval where each verdict
    says; the verdict comes out of results.json's claims as the report shows it."""
    runs = []
    for k, gain in enumerate(gains):
        live = {**live_run.strategies["liveupdate"], "mean_gain_vs_delta_sync_pct": gain}
        runs.append(dataclasses.replace(
            live_run, config=dataclasses.replace(live_run.config, seed=k),
            strategies={**live_run.strategies, "liveupdate": live}))  # fmt: skip
    results = build_results(runs, {"name": "synthetic"})
    accuracy = next(v for v in results["claims"] if v["id"] == "accuracy")
    assert accuracy["verdict"] == verdict and accuracy["held"] is (verdict == c.WITHIN)
    assert accuracy["interval"]["n"] == 3 and "over seeds" in accuracy["measured"]
    assert f"accuracy: {verdict}" in results["summary"]
    ci = results["strategies"]["liveupdate"]["ci95"]["mean_gain_vs_delta_sync_pct"]
    assert (ci["lo"], ci["hi"]) == (accuracy["interval"]["lo"], accuracy["interval"]["hi"])


def test_the_protocol_reach_column_reads_whole_points() -> None:
    from dlrm_core.experiment.protocol_report import _reach
    from dlrm_core.experiment.results import frontier_reading

    frontier = [
        {"sync_period_s": p, "mean_auc": {"delta_sync": d, "hybrid": h},
         "bytes_per_hour": {"delta_sync": 40, "hybrid": b},
         "cpu_seconds_per_hour": {"delta_sync": 8, "hybrid": cpu}}
        for p, d, h, b, cpu in ((600, 0.68, 0.695, 20, 25), (1800, 0.66, 0.685, 10, 40))
    ]  # fmt: skip
    results = {"config": {"sync_period_s": 600}, "frontier_reading": frontier_reading(frontier)}
    assert _reach(results, "hybrid") == (
        "0.25x, 5.00x (its 30-min point); in CPU: 0.50x, 3.12x (its 10-min point)"
    )
    assert _reach(results, "delta_sync") == ""
