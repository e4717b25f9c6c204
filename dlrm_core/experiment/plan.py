"""The runs an experiment needs: one configuration per seed of the main run and of each sweep
point (label delays, sync periods, link scales), and how their summaries come back together.

A sweep point reruns only the strategies whose behaviour depends on what it varies: stale,
the oracle and LiveUpdate never look at the sync period or the link, so their
main-run results stand for every period and link scale (run_summary.with_shared).

The runs of one seed and fleet shape are replayed together (``bundles``, harness.run_bundle):
their cluster trains once, the stream is split over the fleet's nodes once, and each run's
numbers are those of its own replay.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.harness import LOCAL, replay_key
from dlrm_core.experiment.run_summary import RunSummary, with_shared

SYNC_FREE = ("stale", "oracle", "liveupdate")  # no sync, no link


@dataclass(frozen=True)
class Group:
    kind: str  # "main", "delay" (label delay), "period" (sync period)
    value: float  # the delay or period (0 for main)
    link_scale_factor: float = 1.0


MAIN = Group("main", 0.0)
K = TypeVar("K")
# model copies a bundle may hold, in bytes (each of --jobs workers holds one bundle). Measured
# on the 2M stream (122 MiB a copy), the replay's models freed before the next (jobs.run_configs):
# a process peaks at about its models + 1 GiB (the held stream, the memoised base, torch), e.g.
# 14 copies (1.67 GiB) -> 2.68 GiB; so at most ~4 GiB a worker
BUNDLE_MODEL_BYTES = 3 << 30


def sync_dependent(config: ExperimentConfig) -> tuple[str, ...]:
    return tuple(s for s in config.strategies if s not in SYNC_FREE)


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


def model_copies(config: ExperimentConfig) -> int:
    """Models a run holds besides its base and cluster: one per node of a local learner, one
    per other strategy (the oracle serves the cluster's)."""
    return sum(config.fleet.nodes if s in LOCAL else int(s != "oracle") for s in config.strategies)


def _copies(configs: list[ExperimentConfig]) -> int:
    """Models a replay of ``configs`` holds: the base, the cluster and its optimizer state, a
    snapshot of the tables per sync period probed (lowrank.py) and every strategy's."""
    periods = len({c.sync_period_s for c in configs})
    return 3 + periods + sum(model_copies(c) for c in configs)


def split(config: ExperimentConfig, model_bytes: int) -> list[ExperimentConfig]:
    """``config`` alone, or, when its replay's models would not fit ``BUNDLE_MODEL_BYTES``,
    as configurations of consecutive groups of its strategies that each fit (one strategy at
    least), replayed apart and merged back (run_summary.merge_parts): every strategy's numbers
    are those of its own replay either way."""

    def fits(names: tuple[str, ...]) -> bool:
        part = dataclasses.replace(config, strategies=names)
        return _copies([part]) * model_bytes <= BUNDLE_MODEL_BYTES

    groups: list[tuple[str, ...]] = []
    for name in config.strategies:
        if groups and fits((*groups[-1], name)):
            groups[-1] = (*groups[-1], name)
        else:
            groups.append((name,))
    if len(groups) == 1:
        return [config]
    return [dataclasses.replace(config, strategies=g) for g in groups]


def bundles(
    tasks: Sequence[tuple[K, ExperimentConfig]], jobs: int, model_bytes: int
) -> list[list[tuple[K, ExperimentConfig]]]:
    """``tasks`` (in seed order) as bundles to replay together: consecutive tasks of one
    replay key and fleet shape, while the bundle's models fit ``BUNDLE_MODEL_BYTES`` and it
    has at most ceil(tasks / jobs) tasks (every worker gets work). Heaviest first within a
    seed, so the last to finish are light."""
    most = math.ceil(len(tasks) / max(jobs, 1))
    out: list[list[tuple[K, ExperimentConfig]]] = []
    for key, config in tasks:
        last = out[-1] if out else None
        if (
            last is not None
            and len(last) < most
            and replay_key(last[0][1]) == replay_key(config)
            and last[0][1].fleet == config.fleet
            and _copies([c for _, c in last] + [config]) * model_bytes <= BUNDLE_MODEL_BYTES
        ):
            last.append((key, config))
        else:
            out.append([(key, config)])
    weight = {id(b): sum(c.fleet.nodes * len(c.strategies) for _, c in b) for b in out}
    return sorted(out, key=lambda b: (b[0][1].seed, -weight[id(b)]))
