"""``liveupdate experiment``: the freshness experiment, writing results.json and report.html.

Example (MovieLens-100k on a 5-events-per-second clock, gain at three label delays):
    liveupdate experiment --data ../shared/data/movielens_100k --format movielens \\
        --qps 5 --label-delays 60,600,1800 --out bench/out/exp-ml100k
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from dlrm_core.commands import stream_args
from dlrm_core.experiment.config import (
    PRIORITIES,
    STRATEGY_NAMES,
    TB,
    ExperimentConfig,
    LinkConfig,
    LiveUpdateParams,
)
from dlrm_core.experiment.data import FORMATS, open_source
from dlrm_core.experiment.fleet_config import ROUTINGS, FleetConfig
from dlrm_core.synthetic import SyntheticConfig

if TYPE_CHECKING:
    from dlrm_core.experiment.data import StreamSource


def _csv_list(kind: type, choices: tuple[str, ...] | None = None):  # type: ignore[no-untyped-def]
    def parse(text: str) -> tuple:  # type: ignore[type-arg]
        items = tuple(kind(t.strip()) for t in text.split(",") if t.strip())
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
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
        help="choose the cluster lr and LiveUpdate's lr_a on the pretraining head only",
    )
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
    u.add_argument("--rebase-period", type=float, default=None)
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
    u.add_argument("--reuse", type=int, default=live.reuse)
    u.add_argument("--allocation", choices=("benefit", "even"), default=live.allocation)


def _add_protocol_arguments(c: argparse._ArgumentGroup, d: ExperimentConfig) -> None:
    c.add_argument("--strategies", type=_csv_list(str, STRATEGY_NAMES), default=STRATEGY_NAMES)
    c.add_argument("--qps", type=float, default=d.qps, help="events per clock second")
    c.add_argument("--raw-timestamps", action="store_true", help="use the data's timestamps")
    c.add_argument("--window", type=float, default=d.window_s, help="metric window (s)")
    c.add_argument(
        "--fine-window", type=float, default=d.fine_window_s, help="short metric window (s)"
    )
    c.add_argument("--label-delay", type=float, default=d.label_delay_s)
    c.add_argument(
        "--label-delays",
        type=_csv_list(float),
        default=(),
        help="extra label delays (s): liveupdate and delta_sync rerun at each",
    )
    c.add_argument("--sync-period", type=float, default=d.sync_period_s)
    c.add_argument(
        "--sync-periods",
        type=_csv_list(float),
        default=(),
        help="extra sync periods (s) for the cost-accuracy frontier: every strategy reruns",
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
    c.add_argument("--seed", type=int, default=d.seed)
    c.add_argument(
        "--seeds", type=int, default=1, help="runs with seeds seed..seed+K-1 (95%% intervals)"
    )
    c.add_argument("--threads", type=int, default=d.torch_threads)
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
        live=live, torch_threads=args.threads, audit=args.audit, fine_window_s=args.fine_window,
        fleet=FleetConfig(nodes=args.nodes, routing=args.routing, multicast=args.multicast,
                          route_feature=args.route_feature),
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dlrm_core.experiment.report import write_report
    from dlrm_core.experiment.results import build_results, write_results
    from dlrm_core.experiment.tuning import tune

    try:
        if not 1 <= args.seeds <= 100:
            raise ValueError(f"--seeds must be in [1, 100], got {args.seeds}")
        config = build_config(args)
        if args.format == "synthetic":
            stream_args.reject_csv_flags(args)
            synthetic = SyntheticConfig(
                seed=args.seed, num_events=args.events, batch_size=args.batch_size,
                events_per_second=args.qps, user_rows=args.user_rows,
                item_rows=args.item_rows, drift_per_hour=args.drift_per_hour,
            )  # fmt: skip
            source = open_source("synthetic", None, args.batch_size, args.max_events,
                                 synthetic=synthetic)  # fmt: skip
        else:
            source = _file_source(args)
    except (ValueError, OSError) as exc:
        print(f"liveupdate experiment: error: {stream_args.one_line(exc)}", file=sys.stderr)
        return 2
    print(_mapping(config, source.num_events), file=sys.stderr)
    tuning = None
    if args.tune:
        config, tuning = tune(source.schema, source.open, source.num_events, config)
        print(f"tuned on the head: {tuning}", file=sys.stderr)
    plan = _plan(config, args)
    total = source.num_events * sum(len(group) for group in plan.values())
    total *= 2 if config.audit else 1
    bar = tqdm(total=total, unit="ev", desc="replay", file=sys.stderr, mininterval=5.0)
    try:
        with bar:
            done = {key: [_run_one(source, cfg, bar.update) for cfg in group]
                    for key, group in plan.items()}  # fmt: skip
    except ValueError as exc:
        print(f"liveupdate experiment: error: {exc}", file=sys.stderr)
        return 2
    main = done.pop(("main", 0.0))
    delays = [g for (kind, _), g in done.items() if kind == "delay"]
    periods = [g for (kind, _), g in done.items() if kind == "period"]
    results = build_results(main, source.info, delays, tuning, periods)
    args.out.mkdir(parents=True, exist_ok=True)
    write_results(results, args.out / "results.json")
    write_report(results, args.out / "report.html")
    _print_results(results)
    print(f"wrote {args.out / 'results.json'} and {args.out / 'report.html'}")
    return 0 if results["audit"]["passed"] is not False else 1


def _plan(config: ExperimentConfig, args: argparse.Namespace) -> dict:  # type: ignore[type-arg]
    """(kind, value) -> the configs to run, one per seed: the main run, the label-delay sweep
    (delta_sync and LiveUpdate) and the sync-period sweep (every strategy)."""
    import dataclasses

    def seeds(cfg: ExperimentConfig) -> list[ExperimentConfig]:
        return [dataclasses.replace(cfg, seed=cfg.seed + k) for k in range(args.seeds)]

    plan = {("main", 0.0): seeds(config)}
    pair = tuple(s for s in ("delta_sync", "liveupdate") if s in config.strategies)
    if len(pair) == 2:
        for delay in args.label_delays:
            if delay != config.label_delay_s:
                cfg = dataclasses.replace(config, label_delay_s=delay, strategies=pair)
                plan[("delay", delay)] = seeds(cfg)
    for period in args.sync_periods:
        if period != config.sync_period_s:
            plan[("period", period)] = seeds(dataclasses.replace(config, sync_period_s=period))
    return plan


def _run_one(source, config, progress):  # type: ignore[no-untyped-def]
    from dlrm_core.experiment.harness import run_experiment

    return run_experiment(source.schema, source.open, source.num_events, config, progress)


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
    for claim in results["claims"]:
        print(f"claim: {claim['claim']}: {claim['verdict'].upper()}. {claim['measured']} "
              f"{claim['why']}")  # fmt: skip
    audit = results["audit"]
    if audit["enabled"]:
        leaking = sorted({n for r in audit["runs"] for n in r["leaking"]})
        print(f"leak audit: {'passed' if audit['passed'] else 'FAILED ' + str(leaking)}")
    print(f"what this run says: {results['summary']}")


def _file_source(args: argparse.Namespace) -> StreamSource:
    """The data file's stream, counted by one read (malformed lines summarised on stderr)."""
    from dlrm_core.experiment.data import StreamSource

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
