"""``liveupdate experiment``: the freshness experiment, writing results.json and report.html.

Example (MovieLens-100k on a 5-events-per-second clock, gain at three label delays):
    liveupdate experiment --data ../shared/data/movielens_100k --format movielens \\
        --qps 5 --label-delays 60,600,1800 --out bench/out/exp-ml100k
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

from dlrm_core.commands import stream_args
from dlrm_core.commands.jobs import (
    MAX_JOBS,
    StreamSpec,
    resolve_jobs,
    run_all,
    synthetic_source,
)
from dlrm_core.experiment.config import (
    MAX_REUSE,
    PRIORITIES,
    STRATEGY_NAMES,
    TB,
    ExperimentConfig,
    LinkConfig,
    LiveUpdateParams,
)
from dlrm_core.experiment.data import FORMATS, StreamSource
from dlrm_core.experiment.fleet_config import ROUTINGS, FleetConfig
from dlrm_core.experiment.plan import Group, assemble, build_plan, bundles, split
from dlrm_core.experiment.run_summary import RunSummary, merge_parts
from dlrm_core.experiment.tuning import R_MAX_GRID, TAU_GRID

K = TypeVar("K")


MAX_LIST_ITEMS = 32


def csv_list(  # type: ignore[no-untyped-def]
    kind: type, choices: tuple[str, ...] | None = None, lo: float = 0.0, hi: float = 1e9
):
    """An argparse type: a comma-separated list of 1..MAX_LIST_ITEMS values (numbers in
    [lo, hi], names from ``choices``)."""
    number = stream_args.bounded(kind, lo, hi) if kind is not str else str

    def parse(text: str) -> tuple:  # type: ignore[type-arg]
        items = tuple(number(t.strip()) for t in text.split(",") if t.strip())
        if not items or len(items) > MAX_LIST_ITEMS:
            raise argparse.ArgumentTypeError(f"give 1 to {MAX_LIST_ITEMS} values")
        if choices is not None:
            bad = [t for t in items if t not in choices]
            if bad:
                raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {choices}")
        return items

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, live = ExperimentConfig(), LiveUpdateParams()
    parser.add_argument("--out", required=True, type=Path, help="output directory")
    stream_args.add_stream_arguments(parser, FORMATS, batch_size=128)
    s = parser.add_argument_group("synthetic stream")
    s.add_argument("--events", type=int, default=200_000, help="synthetic: number of events")
    s.add_argument("--user-rows", type=int, default=100_000)
    s.add_argument("--item-rows", type=int, default=100_000)
    s.add_argument("--drift-per-hour", type=float, default=1.0)
    c = parser.add_argument_group("clock and protocol")
    _add_protocol_arguments(c, d)
    f = parser.add_argument_group("fleet")
    f.add_argument("--nodes", type=int, default=1, help="inference nodes (each learns its share)")
    f.add_argument("--routing", choices=ROUTINGS, default="sticky-user")
    f.add_argument("--route-feature", help="sticky-user: the user feature (default: *user*)")
    f.add_argument("--multicast", action="store_true", help="a sync is one transfer in all")
    c.add_argument(
        "--tune",
        action="store_true",
        help="choose the cluster lr, then LiveUpdate's lr_a, lr_b, tau and r_max, on a "
        "validation split of the pretraining head only (never the scored windows)",
    )
    c.add_argument("--tau-grid", type=csv_list(float, lo=1e-6, hi=1.0), default=TAU_GRID,
                   help="--tune: tau candidates")  # fmt: skip
    c.add_argument("--r-max-grid", type=csv_list(int, lo=1, hi=64), default=R_MAX_GRID,
                   help="--tune: r_max candidates")  # fmt: skip
    n = parser.add_argument_group("link and syncs")
    n.add_argument("--bandwidth-gbps", type=float, default=100.0)
    n.add_argument(
        "--target-table-tb",
        type=float,
        default=200.0,
        help="project the tables to this size (0: no projection)",
    )
    n.add_argument("--top-p", type=float, default=d.top_p_pct, help="prioritized_delta %%")
    n.add_argument("--priority", choices=PRIORITIES, default=d.priority)
    u = parser.add_argument_group("liveupdate")
    u.add_argument("--tau", type=float, default=live.tau)
    u.add_argument("--r-min", type=int, default=live.r_min)
    u.add_argument("--r-max", type=int, default=live.r_max)
    u.add_argument("--rank", type=int, default=live.initial_rank)
    u.add_argument("--budget-pct", type=float, default=live.budget_pct)
    u.add_argument("--prune-age", type=float, default=live.prune_age_s)
    u.add_argument("--rebase-period", type=float, help="the hybrid's, s (default: sync period)")
    u.add_argument("--lr-a", type=float, default=live.lr_a)
    u.add_argument("--lr-b", type=float, default=live.lr_b)
    u.add_argument(
        "--lr-top", type=float, default=live.lr_top, help="tune the top MLP's last layer (0: off)"
    )
    u.add_argument(
        "--top-layers",
        type=int,
        default=live.top_layers,
        help="how many last layers --lr-top tunes",
    )
    u.add_argument("--reuse", type=stream_args.bounded(int, 0, MAX_REUSE), default=live.reuse,
                   help="extra optimizer passes per batch (0: one, as the cluster)")  # fmt: skip
    u.add_argument("--allocation", choices=("benefit", "even"), default=live.allocation)


def _add_protocol_arguments(c: argparse._ArgumentGroup, d: ExperimentConfig) -> None:
    c.add_argument("--strategies", type=csv_list(str, STRATEGY_NAMES), default=STRATEGY_NAMES)
    c.add_argument("--qps", type=float, default=d.qps, help="events per clock second")
    c.add_argument("--raw-timestamps", action="store_true", help="use the data's timestamps")
    c.add_argument("--window", type=float, default=d.window_s, help="metric window (s)")
    c.add_argument(
        "--fine-window", type=float, default=d.fine_window_s, help="short metric window (s)"
    )
    c.add_argument("--label-delay", type=float, default=d.label_delay_s)
    c.add_argument(
        "--label-delays",
        type=csv_list(float, lo=0.0, hi=1e8),
        default=(),
        help="extra label delays (s): liveupdate and delta_sync rerun at each",
    )
    c.add_argument("--sync-period", type=float, default=d.sync_period_s)
    c.add_argument(
        "--sync-periods",
        type=csv_list(float, lo=1e-3, hi=1e9),
        default=(),
        help="extra sync periods (s) for the cost-accuracy frontier (the strategies that "
        "sync rerun; stale, oracle and liveupdate do not depend on it)",
    )
    c.add_argument(
        "--link-scales",
        type=csv_list(float, lo=1e-6, hi=1e6),
        default=(),
        help="extra link scale factors (x the projection of --target-table-tb): a frontier "
        "per factor",
    )
    c.add_argument("--pretrain-fraction", type=float, default=d.pretrain_fraction)
    c.add_argument("--pretrain-epochs", type=int, default=d.pretrain_epochs)
    c.add_argument(
        "--optimizer",
        choices=("adagrad", "sgd"),
        default=d.optimizer,
        help="pretraining and cluster optimizer",
    )
    c.add_argument("--lr-dense", type=float, default=d.lr_dense)
    c.add_argument("--lr-sparse", type=float, default=d.lr_sparse)
    c.add_argument("--seed", type=stream_args.bounded(int, 0, 2**31 - 101), default=d.seed)
    c.add_argument(
        "--seeds", type=stream_args.bounded(int, 1, 100), default=1,
        help="runs with seeds seed..seed+K-1 (95%% intervals)",
    )  # fmt: skip
    c.add_argument(
        "--jobs", type=stream_args.bounded(int, 1, MAX_JOBS),
        help="worker processes running seeds and sweep points in parallel (default: the "
        "usable cores); the numbers equal a serial run's at the same --threads",
    )  # fmt: skip
    c.add_argument(
        "--threads", type=stream_args.bounded(int, 1, 256),
        help="torch threads per run (default: usable cores // --jobs)",
    )  # fmt: skip
    c.add_argument(
        "--audit",
        action="store_true",
        help="leak audit: replay again with every not-yet-due label permuted; scores must match",
    )


def build_config(args: argparse.Namespace) -> ExperimentConfig:
    live = LiveUpdateParams(
        tau=args.tau, r_min=args.r_min, r_max=args.r_max, initial_rank=args.rank,
        budget_pct=args.budget_pct, prune_age_s=args.prune_age,
        rebase_period_s=args.rebase_period, lr_a=args.lr_a, lr_b=args.lr_b, reuse=args.reuse,
        lr_top=args.lr_top, top_layers=args.top_layers, allocation=args.allocation,
    )  # fmt: skip
    target = args.target_table_tb * TB if args.target_table_tb else None
    return ExperimentConfig(
        seed=args.seed, qps=None if args.raw_timestamps else args.qps, window_s=args.window,
        label_delay_s=args.label_delay, sync_period_s=args.sync_period,
        pretrain_fraction=args.pretrain_fraction, pretrain_epochs=args.pretrain_epochs,
        optimizer=args.optimizer, lr_dense=args.lr_dense, lr_sparse=args.lr_sparse,
        top_p_pct=args.top_p,
        priority=args.priority, strategies=tuple(args.strategies),
        link=LinkConfig(bandwidth_gbps=args.bandwidth_gbps, target_table_bytes=target),
        live=live, audit=args.audit, fine_window_s=args.fine_window,
        fleet=FleetConfig(nodes=args.nodes, routing=args.routing, multicast=args.multicast,
                          route_feature=args.route_feature),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from dlrm_core.experiment.tuning import tune

    try:
        jobs, threads = resolve_jobs(args.jobs, args.threads)
        config = dataclasses.replace(build_config(args), torch_threads=threads)
        spec, source = open_spec(args)
    except (ValueError, OSError) as exc:
        return command_error("experiment", exc)
    print(_mapping(config, source.num_events), file=sys.stderr)
    tuning = None
    if args.tune:
        config, tuning = tune(source.schema, source.open, source.num_events, config,
                              tau_grid=args.tau_grid, r_max_grid=args.r_max_grid)  # fmt: skip
        print(f"tuned on the head: {tuning['chosen']}", file=sys.stderr)
    try:
        plan = build_plan(config, args.seeds, args.label_delays, args.sync_periods,
                          args.link_scales)  # fmt: skip
        done = run_plan(spec, source, plan, jobs, config.audit, group_label)
    except (ValueError, BrokenProcessPool) as exc:
        return command_error("experiment", exc)
    results = results_of(plan, done, source.info, tuning)
    write_outputs(results, args.out)
    _print_results(results)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'}")
    return 0 if results["audit"]["passed"] is not False else 1


def command_error(command: str, exc: Exception) -> int:
    """Say why ``liveupdate <command>`` failed, on one line; its exit status: 1 when a worker
    process died, 2 for bad input (a flag, a file, a plan)."""
    if isinstance(exc, BrokenProcessPool):
        print(f"liveupdate {command}: error: a worker process died ({exc})", file=sys.stderr)
        return 1
    print(f"liveupdate {command}: error: {stream_args.one_line(exc)}", file=sys.stderr)
    return 2


def open_spec(args: argparse.Namespace) -> tuple[StreamSpec, StreamSource]:
    """The stream the flags name (a file is counted by one read), and how workers reopen it."""
    if args.format == "synthetic":
        stream_args.reject_csv_flags(args)
        source = synthetic_source(args)
    else:
        source = _file_source(args)
    return StreamSpec(args, source.num_events, source.info), source


def group_label(group: Group, config: ExperimentConfig) -> str:
    fleet = config.fleet
    where = f"{fleet.nodes} node(s) {fleet.routing}"
    if group.kind == "delay":
        return f"{where}, label delay {group.value:g} s"
    link = "" if group.link_scale_factor == 1.0 else f", link x{group.link_scale_factor:g}"
    return f"{where}, sync period {config.sync_period_s:g} s{link}"


def run_plan(
    spec: StreamSpec, source: StreamSource, plan: dict[K, list[ExperimentConfig]],
    jobs: int, audit: bool, label: Callable[[K, ExperimentConfig], str],
) -> dict[K, list[RunSummary]]:  # fmt: skip
    """Every configuration of ``plan`` on ``jobs`` processes, with progress on stderr: an
    event bar when serial, one line per finished run."""
    from tqdm import tqdm

    config = next(iter(plan.values()))[0]
    model_bytes = 4 * config.embedding_dim * sum(f.num_rows for f in source.schema.sparse)
    # by seed: a worker then meets one seed's runs in a row and pretrains its base once; a run
    # too heavy for one replay is replayed in parts (plan.split), merged back below
    parts = [(key, p) for key, cfgs in plan.items() for c in cfgs for p in split(c, model_bytes)]
    tasks = sorted(parts, key=lambda task: task[1].seed)
    replays = bundles(tasks, jobs, model_bytes)
    total = source.num_events * len(replays) * (2 if audit else 1)
    bar = tqdm(total=total, unit="ev", desc="replay", file=sys.stderr, mininterval=5.0,
               disable=jobs > 1 and len(tasks) > 1)  # fmt: skip
    finished = [0]

    def on_done(key: K, summary: RunSummary, elapsed: float) -> None:
        finished[0] += 1
        k, n = finished[0], len(tasks)
        tqdm.write(f"[{k}/{n}] {label(key, summary.config)}, seed {summary.config.seed}: "
                   f"{summary.wall_seconds:.0f} s ({summary.process_cpu_seconds:.0f} CPU-s); "
                   f"elapsed {elapsed:.0f} s, about {elapsed / k * (n - k):.0f} s left",
                   file=sys.stderr)  # fmt: skip

    with bar:
        done = run_all(spec, source, replays, jobs, on_done, bar.update)
    return {key: [merge_parts([s for s in done[key] if s.config.seed == c.seed], c)
                  for c in cfgs] for key, cfgs in plan.items()}  # fmt: skip


def results_of(
    plan: dict[Group, list[ExperimentConfig]],
    done: dict[Group, list[RunSummary]],
    dataset: dict[str, Any],
    tuning: dict[str, Any] | None,
) -> dict[str, Any]:
    from dlrm_core.experiment.results import build_results

    parts = assemble(plan, done)
    return build_results(parts.main, dataset, parts.delays, tuning, parts.periods, parts.links)


def write_outputs(results: dict[str, Any], out: Path) -> None:
    from dlrm_core.experiment.report import write_report
    from dlrm_core.experiment.results import write_results

    out.mkdir(parents=True, exist_ok=True)
    write_results(results, out / "results.json")
    write_report(results, out / "report.html")


def _print_results(results: dict) -> None:  # type: ignore[type-arg]
    for name, s in results["strategies"].items():
        gain = s["ci95"]["mean_gain_vs_delta_sync_pct"]
        g = (
            "n/a"
            if gain is None
            else f"{gain['mean']:+.3f}% [{gain['lo']:+.3f}, {gain['hi']:+.3f}]"
        )
        print(
            f"{name:18s} mean AUC {s['mean_auc']:.4f}  gain vs delta_sync {g}  fleet MB/h "
            f"{s['bytes_per_hour'] / 1e6:.3g}  fleet CPU-s/h {s['cpu_seconds_per_hour']:.3g}  "
            f"peak mem/node {s['peak_measured_memory_pct']:.3f}% (budgeted "
            f"{s['peak_memory_overhead_pct']:.3f}%)  staleness {s['mean_staleness_s']:.0f} s"
        )
    for name, s in results["strategies"].items():
        if s.get("rank_changes"):
            print(f"{name}: {rank_line(s['rank_changes'])}")
    for claim in results["claims"]:
        print(f"claim: {claim['claim']}: {claim['verdict'].upper()}. {claim['measured']} "
              f"{claim['why']}")  # fmt: skip
    for entry in results["frontier_by_link_scale"]:
        if len(results["frontier_by_link_scale"]) > 1 or len(entry["frontier"]) > 1:
            points = "; ".join(
                f"{r['sync_period_s'] / 60:g} min: " + ", ".join(
                    f"{n} {v:.4f}" for n, v in r["mean_auc"].items() if v is not None)
                for r in entry["frontier"]
            )  # fmt: skip
            print(f"frontier at link x{entry['link_scale_factor']:g} (scale "
                  f"{entry['link_scale']:.3g}): {points}")  # fmt: skip
    audit = results["audit"]
    if audit["enabled"]:
        leaking = sorted({n for r in audit["runs"] for n in r["leaking"]})
        print(f"leak audit: {'passed' if audit['passed'] else 'FAILED ' + str(leaking)}")
    print(f"what this run says: {results['summary']}")


def rank_line(tables: dict) -> str:  # type: ignore[type-arg]
    """Rank changes per hourly window and the most in any hour, per table, and whether it grew
    after its region filled (run_summary's rank_changes)."""
    parts = []
    for table, t in tables.items():
        full = t["full_after_s"]
        when = (
            "never full"
            if full is None
            else (f"full at {full / 3600:.2f} h, grew {t['growths_after_full']}x after")
        )
        per = " ".join(str(n) for n in t["changes_per_window"])
        parts.append(f"{table} {per} (max {t['max_changes_in_an_hour']}/h; {when})")
    return "rank changes per window: " + "; ".join(parts)


def _file_source(args: argparse.Namespace) -> StreamSource:
    """The data file's stream, counted by one read (malformed lines summarised on stderr)."""
    reader = stream_args.open_stream(args)
    events = stream_args.count_usable(reader)
    info = {
        "name": reader.path.name, "format": args.format, "path": str(reader.path),
        "malformed_lines": reader.stats.malformed,
        "malformed_by_reason": dict(reader.stats.by_reason),
    }  # fmt: skip
    return StreamSource(reader.schema, lambda: iter(reader), events, info)


def _mapping(config: ExperimentConfig, events: int) -> str:
    if config.qps is None:
        return f"clock: the data's own timestamps; {events} events"
    q = config.qps
    return (
        f"clock: {q:g} events/s, so {events} events span {events / q / 3600:.2f} h; "
        f"sync period {config.sync_period_s:g} s = {config.sync_period_s * q:.0f} events; "
        f"label delay {config.label_delay_s:g} s = {config.label_delay_s * q:.0f} events; "
        f"window {config.window_s:g} s = {config.window_s * q:.0f} events"
    )
