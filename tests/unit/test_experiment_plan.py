"""The run plan of an experiment (seeds x sweep points), sharing strategies that do not depend
on the sync period, the worker/thread budget and the protocol's fleet shapes."""

from __future__ import annotations

import dataclasses

import pytest

from dlrm_core.commands import jobs
from dlrm_core.commands.protocol import Shape, shapes
from dlrm_core.experiment.config import ExperimentConfig, LinkConfig, LiveUpdateParams
from dlrm_core.experiment.memory import ProcessMemory
from dlrm_core.experiment.plan import MAIN, Group, assemble, build_plan
from dlrm_core.experiment.run_summary import RunSummary

STRATS = ("stale", "oracle", "delta_sync", "liveupdate", "hybrid")


def test_plan_runs_each_sweep_point_per_seed_with_only_the_strategies_it_changes() -> None:
    config = ExperimentConfig(strategies=STRATS, sync_period_s=600.0, label_delay_s=60.0)
    plan = build_plan(config, 3, label_delays=(60.0, 600.0), sync_periods=(120.0, 600.0),
                      link_scale_factors=(0.1,))  # fmt: skip
    assert list(plan) == [MAIN, Group("delay", 600.0), Group("period", 120.0),
                          Group("period", 600.0, 0.1), Group("period", 120.0, 0.1)]  # fmt: skip
    assert [c.seed for c in plan[MAIN]] == [0, 1, 2]
    assert plan[Group("delay", 600.0)][0].strategies == ("delta_sync", "liveupdate")
    swept = plan[Group("period", 120.0, 0.1)][2]
    assert swept.strategies == ("delta_sync", "hybrid") and swept.seed == 2
    assert swept.sync_period_s == 120.0 and swept.link.scale_factor == 0.1
    # a rebase period is the hybrid's: plain LiveUpdate still takes nothing from the cluster
    rebased = dataclasses.replace(config, live=LiveUpdateParams(rebase_period_s=600.0))
    assert "liveupdate" not in build_plan(rebased, 1, sync_periods=(120.0,))[
        Group("period", 120.0)][0].strategies  # fmt: skip
    # nothing that syncs: no sweep
    assert list(build_plan(dataclasses.replace(config, strategies=("stale",)), 1, (),
                           (120.0,))) == [MAIN]  # fmt: skip


def _summary(config: ExperimentConfig, aucs: dict[str, list[float]]) -> RunSummary:
    strategies = {n: {"auc_per_window": a, "auc_per_fine_window": a, "mean_auc": sum(a) / len(a)}
                  for n, a in aucs.items()}  # fmt: skip
    return RunSummary(
        config=config, clock={"link_scale": 1.0}, strategies=strategies,
        windows=[{"index": 0}, {"index": 1}], fine_windows=[], cluster_cpu_seconds=1.0,
        cluster_steps=1, benefit={}, budgets={}, lowrank={}, audit=None,
        process=ProcessMemory(None, None, None), wall_seconds=1.0, eval_start_s=0.0,
        eval_end_s=3600.0, eval_events=10, pretrain_events=5, features=[], table_bytes=100,
        live_memory=[],
    )  # fmt: skip


def test_a_sweep_point_takes_the_shared_strategies_and_its_own_delta_sync_as_reference() -> None:
    config = ExperimentConfig(strategies=("delta_sync", "liveupdate"), sync_period_s=600.0)
    plan = build_plan(config, 1, sync_periods=(120.0,))
    point = Group("period", 120.0)
    main = _summary(config, {"delta_sync": [0.5, 0.8], "liveupdate": [0.55, 0.8]})
    fast = _summary(plan[point][0], {"delta_sync": [0.55, 0.4]})
    parts = assemble(plan, {MAIN: [main], point: [fast]})
    got = parts.periods[0][0].strategies
    assert list(got) == ["delta_sync", "liveupdate"]
    assert got["liveupdate"]["auc_per_window"] == [0.55, 0.8]  # the main run's
    # its gain is now against this period's delta_sync: +0% and +100%
    assert got["liveupdate"]["gain_vs_delta_sync_pct_per_window"] == pytest.approx([0.0, 100.0])
    assert main.strategies["liveupdate"].get("gain_vs_delta_sync_pct_per_window") is None
    other_seed = dataclasses.replace(fast, config=dataclasses.replace(fast.config, seed=1))
    with pytest.raises(ValueError, match="own seed"):
        assemble(plan, {MAIN: [main], point: [other_seed]})


def test_jobs_and_threads_stay_within_the_usable_cores(monkeypatch) -> None:
    monkeypatch.setattr(jobs, "usable_cores", lambda: 4)
    assert jobs.resolve_jobs(None, None) == (4, 1)
    assert jobs.resolve_jobs(2, None) == (2, 2)
    assert jobs.resolve_jobs(1, None) == (1, 4)
    assert jobs.resolve_jobs(8, None) == (8, 1)  # more workers than cores: one thread each
    assert jobs.resolve_jobs(1, 1) == (1, 1)
    with pytest.raises(ValueError, match="= 6 threads > 4 usable cores; lower --threads to 1"):
        jobs.resolve_jobs(3, 2)
    with pytest.raises(ValueError, match="--jobs must be in"):
        jobs.resolve_jobs(65, None)


def test_protocol_shapes_run_a_single_node_once() -> None:
    got = shapes((1, 4, 16), ("sticky-user", "random"))
    assert got == [Shape(1, "sticky-user"), Shape(4, "sticky-user"), Shape(4, "random"),
                   Shape(16, "sticky-user"), Shape(16, "random")]  # fmt: skip
    assert [s.label for s in shapes((2,), ("random",))] == ["N2-random"]


def test_link_scale_factor_multiplies_the_projection() -> None:
    from dlrm_core.experiment.cluster import projection_scale

    assert projection_scale(LinkConfig(target_table_bytes=1e6, scale_factor=0.5), 1000) == 500.0
    assert projection_scale(LinkConfig(target_table_bytes=None, scale_factor=3.0), 1000) == 3.0
    with pytest.raises(ValueError, match="scale_factor"):
        LinkConfig(scale_factor=0.0)


def test_the_memo_keeps_the_most_recently_used_entries() -> None:
    from dlrm_core.experiment.memo import Memo

    memo: Memo[int] = Memo(2)
    calls: list[str] = []

    def make(key: str) -> int:
        calls.append(key)
        return len(calls)

    assert memo.get("a", lambda: make("a")) == 1
    assert memo.get("b", lambda: make("b")) == 2
    assert memo.get("a", lambda: make("a")) == 1 and memo.hits == 1
    memo.get("c", lambda: make("c"))  # evicts b, the least recently used
    assert memo.get("a", lambda: make("a")) == 1
    assert memo.get("b", lambda: make("b")) == 4 and calls == ["a", "b", "c", "b"]
    with pytest.raises(ValueError, match="capacity"):
        Memo(0)


def test_bundles_join_one_seed_and_shape_within_the_memory_and_worker_bounds() -> None:
    from dlrm_core.experiment.fleet_config import FleetConfig
    from dlrm_core.experiment.plan import BUNDLE_MODEL_BYTES, bundles, model_copies

    config = ExperimentConfig(strategies=STRATS, sync_period_s=600.0)
    four = dataclasses.replace(config, fleet=FleetConfig(nodes=4))
    assert model_copies(config) == 1 + 0 + 1 + 1 + 1 and model_copies(four) == 1 + 1 + 4 + 4
    tasks = [((label, g), c) for label, base in (("N1", config), ("N4", four))
             for g, cs in build_plan(base, 2, (), (120.0, 300.0)).items() for c in cs]  # fmt: skip
    tasks.sort(key=lambda t: t[1].seed)
    got = bundles(tasks, 2, model_bytes=1_000)
    # per seed, one bundle per shape, the 4-node one first (heavier)
    assert [(b[0][1].seed, b[0][0][0], len(b)) for b in got] == [
        (0, "N4", 3), (0, "N1", 3), (1, "N4", 3), (1, "N1", 3)]  # fmt: skip
    assert all(len({c.seed for _, c in b}) == 1 and len({c.fleet for _, c in b}) == 1
               for b in got)  # fmt: skip
    # the models of a bundle must fit: 3 + 2 periods + 10 + 6 copies of 1/20 of the bound do not
    big = bundles(tasks, 2, model_bytes=BUNDLE_MODEL_BYTES // 20)
    assert max(len(b) for b in big if b[0][0][0] == "N4") == 2
    # every worker gets work: at most ceil(tasks / jobs) per bundle
    assert max(len(b) for b in bundles(tasks[:6], 3, model_bytes=1)) == 2
    # a different label delay is another replay
    delayed = [(k, dataclasses.replace(c, label_delay_s=5.0)) if i % 2 else (k, c)
               for i, (k, c) in enumerate(tasks[:3])]  # fmt: skip
    assert [len(b) for b in bundles(delayed, 1, model_bytes=1)] == [1, 1, 1]


def test_a_cluster_fed_strategy_is_re_accounted_for_another_fleet() -> None:
    from dlrm_core.experiment.fleet import FleetTotals
    from dlrm_core.experiment.fleet_config import FleetConfig
    from dlrm_core.experiment.run_summary import in_fleet

    one = FleetTotals(nodes=1, bytes_moved=1000.0, bytes_projected=5000.0, cpu_seconds=7.0,
                      node_cpu_seconds=2.0, memory_peak_bytes=300,
                      node_memory_peak_bytes=300)  # fmt: skip
    res = {"mean_auc": 0.7, "fleet": dataclasses.asdict(one)}
    four = in_fleet(res, FleetConfig(nodes=1), FleetConfig(nodes=4), hours=2.0)
    # the cluster's 5 CPU-s once, each node's 2; a transfer per node; the same scores
    assert four["fleet"] == dataclasses.asdict(dataclasses.replace(
        one, nodes=4, bytes_moved=4000.0, bytes_projected=20000.0, cpu_seconds=13.0,
        memory_peak_bytes=1200))  # fmt: skip
    assert four["bytes_per_hour"] == 2000.0 and four["cpu_seconds_per_hour"] == 6.5
    assert four["mean_auc"] == 0.7
    multicast = in_fleet(four, FleetConfig(nodes=4), FleetConfig(nodes=3, multicast=True), 2.0)
    assert multicast["bytes_moved"] == 1000.0 and multicast["cpu_seconds"] == 11.0
