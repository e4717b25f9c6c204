"""``liveupdate node run``: one inference node (nodeworker.node_service.NodeService: the runtime
with its trainer process, the HTTP endpoint, the control channel, telemetry, an optional replayer)
plus the node's Celery worker on ``node.<name>`` as a supervised child process; a dead trainer
or worker is restarted."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from nodeworker import protocol

log = logging.getLogger("nodeworker.node")

PARENT_PID_VAR = "NODE_PARENT_PID"  # set for the worker: it dies with this process (celery_app)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run an inference node")
    run.add_argument("--name", required=True, help="node name (lowercase letters, digits, '-')")
    run.add_argument("--control-plane", help="control plane URL for telemetry (http://host:port)")
    run.add_argument("--token", default=os.environ.get("NODE_TOKEN"), help="or NODE_TOKEN")
    run.add_argument("--checkpoint", help="base checkpoint; default: a fresh model for --replay")
    run.add_argument(
        "--checkpoint-dir",
        type=Path,
        default=os.environ.get("NODE_CHECKPOINT_DIR") or None,
        help="rebases read checkpoints only under it (or NODE_CHECKPOINT_DIR); "
        "default: the folder of --checkpoint",
    )
    run.add_argument("--data-dir", type=Path, help="default: $LIVEUPDATE_DATA_DIR/node-NAME")
    run.add_argument("--http-host", default="127.0.0.1")
    run.add_argument("--http-port", type=int, default=0, help="0: any free port (printed)")
    run.add_argument("--replay", help="synthetic, or FORMAT:PATH (criteo, avazu, movielens)")
    run.add_argument(
        "--skip-events", type=int, default=0, help="replay from event N (the base's pretraining)"
    )
    run.add_argument("--qps", type=float, default=100.0, help="replayed requests per second")
    run.add_argument("--label-delay", type=float, default=1.0, help="seconds until a label")
    run.add_argument("--rows-per-request", type=int, default=1)
    run.add_argument("--label-window", type=float, default=30.0, help="no label after: a 0")
    run.add_argument("--sla-ms", type=float, help="P99 SLA (overrides the policy default)")
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--no-worker", action="store_true", help="do not start the Celery worker")
    run.add_argument("--no-trainer", action="store_true", help="inference only")
    run.add_argument("--no-pin", action="store_true", help="no core pinning")
    run.add_argument("--no-qos", action="store_true", help="never throttle the trainer")


def _worker(name: str, socket_path: Path) -> subprocess.Popen:
    env = {**os.environ, "NODE_NAME": name, "NODE_CONTROL_SOCKET": str(socket_path)}
    env[PARENT_PID_VAR] = str(os.getpid())
    env.pop("NODE_RUNTIME", None)  # this process runs the runtime; the worker only forwards
    command = [sys.executable, "-m", "celery", "-A", "nodeworker.celery_app", "worker"]
    command += ["--pool", "solo", "-Q", protocol.node_queue(name), "-n", f"{name}@%h"]
    command += ["--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    return subprocess.Popen(command, env=env)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from nodeworker.node_service import NodeService, NodeSettings

    try:
        settings = NodeSettings(
            name=args.name,
            data_dir=args.data_dir or NodeSettings.default_data_dir(args.name),
            checkpoint=args.checkpoint,
            checkpoint_dir=args.checkpoint_dir,
            control_plane=args.control_plane,
            token=args.token,
            http_host=args.http_host,
            http_port=args.http_port,
            feedback_secret=os.environ.get("NODE_FEEDBACK_SECRET") or None,
            replay=args.replay,
            skip_events=args.skip_events,
            qps=args.qps,
            label_delay_s=args.label_delay,
            rows_per_request=args.rows_per_request,
            label_window_s=args.label_window,
            sla_ms=args.sla_ms,
            seed=args.seed,
            trainer=not args.no_trainer,
            pin=not args.no_pin,
            qos=not args.no_qos,
        )
        service = NodeService(settings).start()
    except ValueError as exc:
        raise SystemExit(f"liveupdate node run: {exc}") from None
    worker = None if args.no_worker else _worker(args.name, settings.control_socket)
    print(f"node {args.name}: serving on {service.http.url if service.http else '?'}", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop.wait(1.0):
            if deadline and time.monotonic() > deadline:
                break
            service.supervise()
            if worker is not None and worker.poll() is not None:
                log.error("celery worker exited (%s); restarting it", worker.returncode)
                worker = _worker(args.name, settings.control_socket)
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=20)
        service.stop()
    return 0
