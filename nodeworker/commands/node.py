"""``liveupdate node run``: the inference-node process. It starts the NodeRuntime (inference +
trainer process), the node-local HTTP endpoint, the control channel, the telemetry reporter, the
node's Celery worker on ``node.<name>`` (a supervised subprocess), and optionally the built-in
traffic replayer; it restarts the worker or the trainer when either dies."""

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

FORMATS = ("criteo", "avazu", "movielens")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    run = sub.add_parser("run", help="run an inference node")
    run.add_argument("--name", required=True, help="node name (lowercase letters, digits, '-')")
    run.add_argument("--control-plane", help="control plane URL for telemetry (http://host:port)")
    run.add_argument("--token", default=os.environ.get("NODE_TOKEN"), help="or NODE_TOKEN")
    run.add_argument("--checkpoint", help="base checkpoint; default: a fresh model for --replay")
    run.add_argument("--data-dir", type=Path, help="default: $LIVEUPDATE_DATA_DIR/node-NAME")
    run.add_argument("--http-host", default="127.0.0.1")
    run.add_argument("--http-port", type=int, default=0, help="0: any free port (printed)")
    run.add_argument("--replay", help="synthetic, or FORMAT:PATH (criteo, avazu, movielens)")
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


def open_source(spec: str, seed: int):
    """(stream of SparseBatches, its StreamSchema) for --replay."""
    if spec == "synthetic":
        from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

        stream = SyntheticStream(
            SyntheticConfig(seed=seed, num_events=10**9, user_rows=100_000, item_rows=50_000)
        )
        return stream, stream.schema
    kind, _, path = spec.partition(":")
    if kind not in FORMATS or not path:
        raise SystemExit(f"--replay must be synthetic or FORMAT:PATH ({', '.join(FORMATS)})")
    from dlrm_core import readers

    reader_class = {
        "criteo": readers.CriteoReader,
        "avazu": readers.AvazuReader,
        "movielens": readers.MovieLensReader,
    }[kind]
    reader = reader_class(path)
    return reader, reader.schema


def _worker(name: str, socket_path: Path) -> subprocess.Popen:
    env = {**os.environ, "NODE_NAME": name, "NODE_CONTROL_SOCKET": str(socket_path)}
    command = [sys.executable, "-m", "celery", "-A", "nodeworker.celery_app", "worker"]
    command += ["--pool", "solo", "-Q", protocol.node_queue(name), "-n", f"{name}@%h"]
    command += ["--loglevel", "INFO", "--without-gossip", "--without-mingle"]
    return subprocess.Popen(command, env=env)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO"),
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    from nodeworker.control import ControlServer
    from nodeworker.http import NodeHTTPServer
    from nodeworker.replayer import ReplayConfig, Replayer
    from nodeworker.runtime import NodeRuntime, RuntimeConfig, build_fresh_checkpoint
    from nodeworker.telemetry import TelemetryReporter

    try:
        protocol.node_queue(args.name)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    if args.control_plane and not args.token:
        raise SystemExit("--token (or NODE_TOKEN) is required with --control-plane")
    data_root = Path(os.environ.get("LIVEUPDATE_DATA_DIR") or "var")
    data_dir = args.data_dir or data_root / f"node-{args.name}"
    data_dir.mkdir(parents=True, exist_ok=True)
    source = schema = None
    if args.replay:
        source, schema = open_source(args.replay, args.seed)
    checkpoint = args.checkpoint
    if checkpoint is None:
        if schema is None:
            raise SystemExit("give --checkpoint, or --replay to start from a fresh model")
        checkpoint = build_fresh_checkpoint(schema, data_dir / "fresh-base.ckpt", args.seed)
    policy = dict(protocol.POLICY_DEFAULTS)
    if args.sla_ms is not None:
        policy["sla_p99_ms"] = args.sla_ms
    _, errors = protocol.validate_policy(policy)
    if errors:
        raise SystemExit(f"invalid policy: {errors}")
    runtime = NodeRuntime(
        RuntimeConfig(
            name=args.name,
            data_dir=data_dir,
            checkpoint=checkpoint,
            policy=policy,
            trainer=not args.no_trainer,
            pin=not args.no_pin,
            qos=not args.no_qos,
            label_window_s=args.label_window,
        )
    ).start()
    runtime.wait_ready()
    http = NodeHTTPServer(runtime, args.http_host, args.http_port).start()
    socket_path = data_dir / "control.sock"
    control = ControlServer(socket_path, runtime).start()
    reporter = None
    if args.control_plane:
        reporter = TelemetryReporter(
            args.name,
            args.control_plane,
            args.token,
            data_dir / "telemetry",
            runtime.telemetry_snapshot,
        ).start()
    replayer = None
    if source is not None:
        config = ReplayConfig(
            qps=args.qps,
            label_delay_s=args.label_delay,
            rows_per_request=args.rows_per_request,
            seed=args.seed,
        )
        replayer = Replayer(runtime.predict, runtime.feedback, source, config).start()
    worker = None if args.no_worker else _worker(args.name, socket_path)
    print(
        f"node {args.name}: serving on {http.url} (POST /v1/predict, /v1/feedback), "
        f"placement {runtime.plan.as_dict()}",
        flush=True,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    deadline = time.monotonic() + args.duration if args.duration else None
    try:
        while not stop.wait(1.0):
            if deadline and time.monotonic() > deadline:
                break
            runtime.supervise()
            if worker is not None and worker.poll() is not None:
                log.error("celery worker exited (%s); restarting it", worker.returncode)
                worker = _worker(args.name, socket_path)
    finally:
        if replayer:
            replayer.stop()
        if worker is not None:
            worker.terminate()
            worker.wait(timeout=20)
        if reporter:
            reporter.stop()
        control.stop()
        http.stop()
        runtime.stop()
    return 0
