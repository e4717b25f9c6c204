"""The runs an experiment needs: one configuration per seed of the main run and of each sweep
point (label delays, sync periods, link scales), and how their summaries come back together.

A sweep point reruns only the strategies whose behaviour depends on what it varies: stale,
the oracle and LiveUpdate without rebases never look at the sync period or the link, so their
main-run results stand for every period and link scale (run_summary.with_shared).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.run_summary import RunSummary, with_shared

SYNC_FREE = ("stale", "oracle", "liveupdate")  # no sync, no link (liveupdate: without rebases)


@dataclass(frozen=True)
class Group:
    kind: str  # "main", "delay" (label delay), "period" (sync period)
    value: float  # the delay or period (0 for main)
    link_scale_factor: float = 1.0


MAIN = Group("main", 0.0)


def sync_dependent(config: ExperimentConfig) -> tuple[str, ...]:
    free = set(SYNC_FREE) if config.live.rebase_period_s is None else {"stale", "oracle"}
    return tuple(s for s in config.strategies if s not in free)


def build_plan(
    config: ExperimentConfig,
    seeds: int,
    label_delays: Sequence[float] = (),
    sync_periods: Sequence[float] = (),
    link_scale_factors: Sequence[float] = (),
) -> dict[Group, list[ExperimentConfig]]:
    """Group -> its configurations, one per seed (seed, seed + 1, ...)."""

    def per_seed(cfg: ExperimentConfig) -> list[ExperimentConfig]:
        return [dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(seeds)]

    plan = {MAIN: per_seed(config)}
    pair = tuple(s for s in ("delta_sync", "liveupdate") if s in config.strategies)
    if len(pair) == 2:
        for delay in label_delays:
            if delay != config.label_delay_s:
                cfg = dataclasses.replace(config, label_delay_s=delay, strategies=pair)
                plan[Group("delay", delay)] = per_seed(cfg)
    swept = sync_dependent(config)
    if not swept:
        return plan
    main_factor = config.link.scale_factor
    for factor in dict.fromkeys([main_factor, *link_scale_factors]):
        link = dataclasses.replace(config.link, scale_factor=factor)
        for period in dict.fromkeys([config.sync_period_s, *sync_periods]):
            if factor == main_factor and period == config.sync_period_s:
                continue
            cfg = dataclasses.replace(config, sync_period_s=period, link=link, strategies=swept)
            plan[Group("period", period, factor)] = per_seed(cfg)
    return plan


@dataclass(frozen=True)
class Assembled:
    main: list[RunSummary]
    delays: list[list[RunSummary]]
    periods: list[list[RunSummary]]  # the main link scale's
    links: dict[float, list[list[RunSummary]]]  # other link scale factor -> its periods


def assemble(
    plan: dict[Group, list[ExperimentConfig]], done: dict[Group, list[RunSummary]]
) -> Assembled:
    """The summaries by role, each sweep point completed with the main run's shared
    strategies (seed by seed)."""
    main = done[MAIN]
    main_factor = plan[MAIN][0].link.scale_factor
    delays, periods = [], []
    links: dict[float, list[list[RunSummary]]] = {}
    for group in plan:
        if group == MAIN:
            continue
        if group.kind == "delay":  # the delay changes every strategy: nothing is shared
            delays.append(done[group])
            continue
        runs = [with_shared(s, m) for s, m in zip(done[group], main, strict=True)]
        if group.link_scale_factor == main_factor:
            periods.append(runs)
        else:
            links.setdefault(group.link_scale_factor, []).append(runs)
    return Assembled(main, delays, periods, links)
