"""``liveupdate protocol``: the evaluation protocol in one command, for one dataset.

Every fleet shape of the grid (``--grid-nodes`` x ``--grid-routings``; one node has no routing
to vary, so N = 1 runs once) at every sync period of ``--sync-periods`` (the frontier) and
every seed of ``--seeds``, all runs spread over ``--jobs`` worker processes (the strategies
default to stale, oracle, delta_sync, liveupdate and the hybrid). The runs of one seed and
fleet shape are one replay (plan.bundles): the cluster trains once for all their periods.
The strategies the cluster feeds (stale, oracle, the syncs) serve one model on every node, so
their scores do not depend on the shape: they run in the first shape only and every other shape
reports them in its own fleet accounting (own_runs, with_shared_runs; a shape's CPU time then
counts only its own runs). It writes, under ``--out``:

- ``protocol.json``: the grid, the run time and, per fleet shape, its full results.json;
- ``report.html``: one table over the grid (AUC with 95% intervals, cost, claims, the frontier
  reading) linking each shape's own report;
- ``<shape>/results.json`` and ``<shape>/report.html`` (each importable on the dashboard).

Example (MovieLens-100k; the defaults are the issue's protocol: N in {1, 4, 16}, both
routings, 3 seeds, sync periods of 2, 5, 10, 30 and 60 minutes):
    liveupdate protocol --data ../shared/data/movielens_100k --format movielens --qps 5 \\
        --out bench/out/protocol-ml100k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from dlrm_core.commands import experiment
from dlrm_core.commands.jobs import resolve_jobs
from dlrm_core.experiment.audit import LeakAudit
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.fleet_config import ROUTINGS
from dlrm_core.experiment.harness import LOCAL
from dlrm_core.experiment.plan import Group, build_plan
from dlrm_core.experiment.run_summary import RunSummary, in_fleet, merge_parts

PROTOCOL_PERIODS = (120.0, 300.0, 600.0, 1800.0, 3600.0)
# liveupdate_dense is left out by default: it reruns at every period as a whole fleet and
# nearly doubles the grid's CPU (add it with --strategies)
PROTOCOL_STRATEGIES = ("stale", "oracle", "delta_sync", "liveupdate", "hybrid")
SCHEMA = "liveupdate-protocol/1"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    experiment.add_arguments(parser)
    g = parser.add_argument_group("protocol grid")
    g.add_argument("--grid-nodes", type=experiment.csv_list(int, lo=1, hi=1024),
                   default=(1, 4, 16), help="fleet sizes")  # fmt: skip
    g.add_argument("--grid-routings", type=experiment.csv_list(str, ROUTINGS),
                   default=ROUTINGS, help="routings (fleets of 2+ nodes)")  # fmt: skip
    parser.set_defaults(seeds=3, sync_periods=PROTOCOL_PERIODS, strategies=PROTOCOL_STRATEGIES)


@dataclasses.dataclass(frozen=True)
class Shape:
    nodes: int
    routing: str

    @property
    def label(self) -> str:
        return f"N{self.nodes}-{self.routing}"


def shapes(nodes: tuple[int, ...], routings: tuple[str, ...]) -> list[Shape]:
    """The grid's fleet shapes; a single node once (routing does not apply to it)."""
    out = [Shape(n, r) for n in dict.fromkeys(nodes) for r in routings]
    return list(dict.fromkeys(Shape(1, routings[0]) if s.nodes == 1 else s for s in out))


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    try:
        jobs, threads = resolve_jobs(args.jobs, args.threads)
        base = dataclasses.replace(experiment.build_config(args), torch_threads=threads)
        spec, source = experiment.open_spec(args)
        grid = shapes(args.grid_nodes, args.grid_routings)
        plans = {s: _plan(base, s, args) for s in grid}
    except (ValueError, OSError) as exc:
        return experiment.command_error("protocol", exc)
    combined = own_runs(plans)
    runs = sum(len(c) for c in combined.values())
    print(f"{len(grid)} fleet shapes x {len(args.sync_periods) + 1} sync periods x "
          f"{args.seeds} seeds: {runs} runs on {jobs} worker(s) x {threads} thread(s); "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)  # fmt: skip
    try:
        done = with_shared_runs(
            plans, experiment.run_plan(spec, source, combined, jobs, base.audit, _label)
        )
    except (ValueError, BrokenProcessPool) as exc:
        return experiment.command_error("protocol", exc)
    out: dict[str, Any] = {
        "schema": SCHEMA, "dataset": source.info,
        "grid": {"shapes": [dataclasses.asdict(s) for s in grid], "seeds": args.seeds,
                 "sync_periods_s": sorted({base.sync_period_s, *args.sync_periods}),
                 "strategies": list(base.strategies)},
        "jobs": jobs, "threads": threads, "runs": runs, "configurations": [],
    }  # fmt: skip
    for shape, plan in plans.items():
        mine = {g: done[(shape, g)] for g in plan}
        results = experiment.results_of(plan, mine, source.info, None)
        experiment.write_outputs(results, args.out / shape.label)
        out["configurations"].append({"label": shape.label, "nodes": shape.nodes,
                                      "routing": shape.routing, "results": results})  # fmt: skip
    out["wall_seconds"] = time.perf_counter() - start
    # the runs' own CPU time: wall time on an idle machine ~ this / min(jobs, cores)
    out["run_cpu_seconds"] = sum(s.process_cpu_seconds for runs in done.values() for s in runs)
    from dlrm_core.experiment.protocol_report import print_table, write_protocol_report

    (args.out / "protocol.json").write_text(json.dumps(out, indent=1, allow_nan=False))
    write_protocol_report(out, args.out / "report.html")
    print_table(out)
    print(
        f"wrote {args.out / 'protocol.json'} and {args.out / 'report.html'} in "
        f"{out['wall_seconds']:.0f} s ({out['run_cpu_seconds']:.0f} CPU-s in the runs)"
    )
    return 0


def _plan(base: ExperimentConfig, shape: Shape, args: argparse.Namespace) -> dict[Group, Any]:
    fleet = dataclasses.replace(base.fleet, nodes=shape.nodes, routing=shape.routing)
    config = dataclasses.replace(base, fleet=fleet)
    return build_plan(config, args.seeds, args.label_delays, args.sync_periods, args.link_scales)


Key = tuple[Shape, Group]


def own_runs(plans: dict[Shape, dict[Group, list[ExperimentConfig]]]) -> dict[Key, Any]:
    """The runs to replay: the first shape's whole, every other shape's without the strategies
    the cluster feeds (stale, oracle, the syncs: the same model on every node, so their scores
    do not depend on the fleet shape; with_shared_runs takes them from the first shape)."""
    first = next(iter(plans))
    out: dict[Key, list[ExperimentConfig]] = {}
    for shape, plan in plans.items():
        for group, cfgs in plan.items():
            if shape == first:
                out[(shape, group)] = cfgs
            elif _local(cfgs[0]):
                out[(shape, group)] = [dataclasses.replace(c, strategies=_local(c)) for c in cfgs]
    return out


def with_shared_runs(
    plans: dict[Shape, dict[Group, list[ExperimentConfig]]], done: dict[Key, list[RunSummary]]
) -> dict[Key, list[RunSummary]]:
    """Every shape's runs whole: the first shape's cluster-fed strategies (seed by seed, in
    this shape's fleet accounting: run_summary.in_fleet) beside the shape's own."""
    first = next(iter(plans))
    out: dict[Key, list[RunSummary]] = {}
    for shape, plan in plans.items():
        for group, cfgs in plan.items():
            ref = done[(first, group)]
            if shape == first:
                out[(shape, group)] = ref
                continue
            own = done.get((shape, group), [])
            out[(shape, group)] = [
                merge_parts([_refleet(r, c), *[s for s in own if s.config.seed == c.seed]], c)
                for r, c in zip(ref, cfgs, strict=True)
            ]
    return out


def _local(config: ExperimentConfig) -> tuple[str, ...]:
    return tuple(s for s in config.strategies if s in LOCAL)


def _refleet(run: RunSummary, config: ExperimentConfig) -> RunSummary:
    """The cluster-fed strategies of ``run`` (the first shape's) as run in ``config``'s fleet."""
    shared = {
        name: in_fleet(res, run.config.fleet, config.fleet, run.eval_hours)
        for name, res in run.strategies.items()
        if name not in LOCAL
    }
    audit = run.audit and LeakAudit(
        run.audit.labels_changed, {n: a for n, a in run.audit.strategies.items() if n in shared}
    )
    return dataclasses.replace(
        run, config=dataclasses.replace(config, strategies=tuple(shared)), strategies=shared,
        live_memory=[], budgets={}, audit=audit, process_cpu_seconds=0.0, wall_seconds=0.0,
    )  # fmt: skip


def _label(key: tuple[Shape, Group], config: ExperimentConfig) -> str:
    return experiment.group_label(key[1], config)
