"""``liveupdate cluster``: the simulated training cluster of the delta-sync baseline.

``cluster init`` writes a base checkpoint for a stream (a fresh DLRM, optionally pretrained on
the stream's first events), the one every demo node and the cluster start from; ``cluster run``
trains a full copy on the stream at the node's pace and ships changed rows to the node's
control channel every period, or rows and MLPs every rebase period when the node's policy sets
one (nodeworker.delta_cluster)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    init = sub.add_parser("init", help="write the shared base checkpoint for a stream")
    run = sub.add_parser("run", help="train on the stream and sync changed rows to a node")
    for p in (init, run):
        p.add_argument("--replay", required=True, help="synthetic[:k=v,...] or FORMAT:PATH")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--checkpoint", type=Path, required=True)
    init.add_argument("--pretrain-events", type=int, default=0, help="learn the first N events")
    run.add_argument(
        "--skip-events", type=int, default=0, help="replay from event N (the base's pretraining)"
    )
    run.add_argument("--node-socket", type=Path, required=True, help="the node's control.sock")
    run.add_argument("--qps", type=float, default=100.0, help="the node's replay rate")
    run.add_argument("--label-delay", type=float, default=1.0)
    run.add_argument(
        "--sync-period",
        type=float,
        default=30.0,
        help="seconds between delta syncs, and between reads of the node's policy",
    )
    run.add_argument("--lr", type=float, default=0.05, help="Adagrad rate (the MLPs': rebases)")
    run.add_argument(
        "--transfer",
        type=float,
        default=0.0,
        help="seconds from a sync's snapshot to its rows reaching the node (the link; 0..3600)",
    )


def _init(args: argparse.Namespace, source, schema) -> int:
    import torch

    from dlrm_core.checkpoint import save_model
    from dlrm_core.experiment.cluster import pretrain_base
    from dlrm_core.model import DLRM, DLRMConfig

    if not 0 <= args.pretrain_events <= 10**8:
        raise SystemExit("liveupdate cluster init: --pretrain-events must be in [0, 1e8]")
    torch.manual_seed(args.seed)
    model = DLRM(DLRMConfig.from_schema(schema))
    seen = pretrain_base(model, source, args.pretrain_events) if args.pretrain_events else 0
    args.checkpoint.parent.mkdir(parents=True, exist_ok=True)
    partial = args.checkpoint.with_name(args.checkpoint.name + ".partial")
    save_model(partial, model)
    os.replace(partial, args.checkpoint)  # a reader never sees half a checkpoint
    print(f"base checkpoint {args.checkpoint} (pretrained on {seen} events)", flush=True)
    return 0


def _run(args: argparse.Namespace, source) -> int:
    from dlrm_core.checkpoint import load_model
    from nodeworker.control_socket import ControlClient
    from nodeworker.delta_cluster import ClusterConfig, DeltaSyncCluster

    try:
        config = ClusterConfig(
            args.sync_period,
            args.qps,
            args.label_delay,
            lr_sparse=args.lr,
            lr_dense=args.lr,
            transfer_s=args.transfer,
        )
    except ValueError as exc:
        raise SystemExit(f"liveupdate cluster run: {exc}") from None
    client = ControlClient(args.node_socket)
    cluster = DeltaSyncCluster(
        load_model(args.checkpoint),
        lambda deltas, stamp, dense: client.call(
            "apply_delta",
            deltas=deltas,
            created_at=stamp.created_at,
            trained_until=stamp.trained_until,
            dense=dense,
            snapshot=stamp.snapshot,
        ),
        config,
        lambda: _rebase_period(client.call("status")),
        lambda snapshot, at: client.call("announce_snapshot", snapshot=snapshot, taken_at=at),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(
        f"cluster: syncing changed rows to {args.node_socket} every {config.sync_period_s} s, "
        "or rows and MLPs every rebase_period_s of the node's policy; each lands "
        f"{config.transfer_s} s after its snapshot"
    )
    cluster.run(source, stop)
    stop.wait()
    return 0


def _rebase_period(status: dict) -> float | None:
    """The node's rebase period from its status; None while it runs its start-up policy."""
    return status["policy"]["rebase_period_s"] if status["policy_applied"] else None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from nodeworker.node_service import open_source

    try:
        skip = args.skip_events if args.action == "run" else 0
        source, schema = open_source(args.replay, args.seed, skip)
    except ValueError as exc:
        raise SystemExit(f"liveupdate cluster: {exc}") from None
    return _init(args, source, schema) if args.action == "init" else _run(args, source)
