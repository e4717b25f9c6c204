"""The embedded appliance: SQLite, in-memory channel layer, filesystem broker, no servers.

``liveupdate demo`` prepares the database (migrations, an admin login, two policies, two nodes
with fresh tokens), then supervises (controlplane.supervisor) these processes, logging to
``$LIVEUPDATE_DATA_DIR/logs/``:

- ``web``: the ASGI server (``liveupdate serve``). It also ingests telemetry and fans it out to
  the dashboards, so the in-memory channel layer is enough: producer and consumers share it;
- ``celery``: one control-plane Celery worker with beat embedded (``-B``: watchdog, action
  refresh, roll-out, retention) on the filesystem broker; node actions are sent through it;
- ``edge-live``: a node with the LiveUpdate policy (local low-rank training), its policy's
  ``rebase_period_s`` ``--rebase-period`` (30 min), so that it is fed by
- ``cluster-live``: a simulated training cluster (``liveupdate cluster run``) learning a full
  copy of the model on the same stream and sending, every rebase period, the rows it changed
  and its MLPs (a delta rebase: the node keeps its other rows' corrections);
- ``edge-baseline``: a node with the delta-sync policy (no local training), fed by
- ``cluster``: the same simulated cluster, shipping the rows it changed every ``--sync-period``
  (3 min).

Both clusters' shipments land ``--transfer`` (60 s) after their snapshot, a link's time between
clusters: what edge-live learns meanwhile is carried onto a rebase's rows where its anchor holds
them (the cluster's log says how many).

Both nodes and the cluster start from one base checkpoint (``liveupdate cluster init``,
pretrained on the stream's first ``--pretrain-events``, registered as the ModelCheckpoint
``demo-base`` so a rebase onto it works from the dashboard) and replay the same stream from there
on: the synthetic drifting one, or ``--data PATH --format F``. On the first start, once the
dashboard answers, a short experiment run (``liveupdate experiment`` on a small synthetic
stream, at the lowest CPU priority, logged to ``experiment.log``) fills the experiments page.
Ctrl-C or SIGTERM stops every process.
"""

import argparse
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

NODES = {"edge-live": "liveupdate", "edge-baseline": "delta-sync"}  # node -> policy
CLUSTERS = {"cluster-live": "edge-live", "cluster": "edge-baseline"}  # cluster -> the node fed
POLICY_MODES = {"liveupdate": "liveupdate", "delta-sync": "delta_sync"}
FORMATS = ("criteo", "avazu", "movielens")
DEMO_SLA_MS = 150.0
BASE_CHECKPOINT = "demo-base"
DEMO_EXPERIMENT = "demo: synthetic drifting stream, 60k events"
# About a minute of one core at the lowest priority: every strategy on a small drifting stream.
EXPERIMENT_OPTIONS = {"events": 60_000, "user-rows": 10_000, "item-rows": 10_000, "threads": 1}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--data", type=Path, help="replay this dataset (file or folder) instead")
    parser.add_argument("--format", choices=FORMATS, help="the format of --data")
    parser.add_argument("--qps", type=float, default=50.0, help="requests per second per node")
    parser.add_argument(
        "--drift", type=float, default=10.0, help="synthetic drift: radians per hour of tastes"
    )
    parser.add_argument(
        "--sync-period", type=float, default=180.0, help="seconds between the cluster's syncs"
    )
    parser.add_argument(
        "--rebase-period",
        type=float,
        default=1800.0,
        help="seconds between delta rebases of edge-live (its new policy's rebase_period_s)",
    )
    parser.add_argument(
        "--transfer",
        type=float,
        default=60.0,
        help="seconds from a cluster's snapshot to its rows reaching the node",
    )
    parser.add_argument(
        "--pretrain-events", type=int, default=50_000, help="the base learns these, then replay"
    )
    parser.add_argument("--seed", type=int, default=0)


def ensure_demo_admin(data_dir) -> tuple[str, str]:
    """An admin account for the local operator, its password kept beside the embedded database."""
    from django.contrib.auth import get_user_model

    password_file = data_dir / "demo-admin-password"
    if password_file.exists():
        password = password_file.read_text().strip()
    else:
        password = secrets.token_urlsafe(12)
        password_file.write_text(password)
        password_file.chmod(0o600)
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(
        username="admin", defaults={"is_staff": True, "is_superuser": True}
    )
    if not user.check_password(password):
        user.set_password(password)
        user.save()
    return "admin", password


def ensure_demo_nodes(rebase_period_s: float) -> dict[str, str]:
    """The two policies and nodes (node -> a fresh token), each node's policy sent to its queue
    (its worker picks the action up when it starts). A new LiveUpdate policy takes delta rebases
    every ``rebase_period_s``."""
    from controlplane.models import Node, Policy
    from controlplane.services.actions import request_action
    from controlplane.services.policies import save_policy

    tokens = {}
    for name, policy_name in NODES.items():
        policy = Policy.objects.filter(name=policy_name).first()
        if policy is None:
            # Every demo process shares this machine's cores: an SLA a laptop can keep, so the
            # QoS throttle does not pause the LiveUpdate trainer for the neighbours' noise.
            mode = POLICY_MODES[policy_name]
            policy = Policy(name=policy_name, mode=mode, sla_p99_ms=DEMO_SLA_MS)
            if mode == "liveupdate":
                policy.rebase_period_s = rebase_period_s
            policy.description = "created by the demo"
            save_policy(policy, actor="demo", reason="the demo's nodes")
        node = Node.objects.filter(name=name).first() or Node(name=name, host="localhost")
        node.policy = policy
        tokens[name] = node.rotate_token()
        node.save()
        request_action(node, "apply_policy", actor="demo")
    return tokens


def register_base_checkpoint(path: Path) -> None:
    """The demo's base model as a ModelCheckpoint (sha256 of the file): the nodes can be
    rebased onto it (back to the bare base) from the dashboard, with no shell needed."""
    from controlplane.models import ModelCheckpoint

    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    ModelCheckpoint.objects.update_or_create(
        name=BASE_CHECKPOINT,
        defaults={
            "location": str(path.resolve()),
            "checksum": f"sha256:{digest.hexdigest()}",
            "size_bytes": path.stat().st_size,
            "notes": "The base model both demo nodes and the cluster start from (liveupdate demo).",
        },
    )


class DemoExperiment:
    """The first start's experiment run, in the background: ``liveupdate experiment`` at the
    lowest CPU priority, then its results imported as an ExperimentRun."""

    def __init__(self, args: argparse.Namespace, data_dir: Path, env: dict):
        from controlplane.supervisor import Child

        self.out = data_dir / "experiments" / "demo"
        options = {**EXPERIMENT_OPTIONS, "drift-per-hour": args.drift, "seed": args.seed}
        self.parameters = {"format": "synthetic", **options}
        argv = [sys.executable, "-m", "controlplane.cli", "experiment", "--out", str(self.out)]
        argv += ["--format", "synthetic"]
        argv += [x for k, v in options.items() for x in (f"--{k}", str(v))]
        nice = shutil.which("nice")
        argv = [nice, "-n", "19", *argv] if nice else argv
        self.child = Child("experiment", argv, env, data_dir / "logs" / "experiment.log")
        self.done = False

    @staticmethod
    def needed() -> bool:
        from controlplane.models import ExperimentRun

        return not ExperimentRun.objects.filter(name=DEMO_EXPERIMENT).exists()

    def start(self) -> None:
        self.child.start()

    def poll(self, url: str) -> None:
        """Once the run has ended: import it, or say where its log is."""
        if self.done or self.child.alive():
            return
        self.done = True
        code = self.child.process.returncode if self.child.process else None
        if code != 0:
            print(
                f"The demo's experiment run failed ({code}); see {self.child.log_path}", flush=True
            )
            return
        from django.core.management import CommandError, call_command

        parameters = self.out / "parameters.json"
        parameters.write_text(json.dumps(self.parameters))
        results = str(self.out / "results.json")
        try:
            call_command(
                "import_experiment",
                results,
                name=DEMO_EXPERIMENT,
                parameters=parameters,
                verbosity=0,
            )
        except CommandError as exc:
            print(f"The demo's experiment run could not be imported: {exc}", flush=True)
            return
        print(f"An experiment run is on {url}experiments/", flush=True)

    def stop(self) -> None:
        self.child.terminate()
        self.child.reap(time.monotonic() + 10)


def _replay_spec(args: argparse.Namespace) -> str:
    if args.data is None:
        if args.format:
            raise SystemExit("liveupdate demo: --format needs --data")
        # A short stream whose ids are born at a visible rate (10k users and 5k items over the
        # stream), fresh ids drawing a share of the traffic at once: what staleness costs shows
        # in minutes. The tables are 19 MB so that 2% of them holds rows: on a node an active
        # row costs ~160 bytes at r = 4 with its copies (row_budget.py) and each table ~2.5 KB
        # before its first row; 2 MB of tables held 9-17 rows a table. The stream lasts
        # num_events / qps (about 5.5 hours at 50 QPS).
        options = {
            "drift_per_hour": args.drift,
            "batch_size": 128,
            "num_events": 1_000_000,
            "user_rows": 200_000,
            "item_rows": 100_000,
            "new_id_share": 0.05,
            "fresh_event_share": 0.3,
            "fresh_window_events": 2_000,
        }
        return "synthetic:" + ",".join(f"{k}={v}" for k, v in options.items())
    if not args.format:
        raise SystemExit("liveupdate demo: --data needs --format (criteo, avazu, movielens)")
    if not args.data.exists():  # a file, or a folder for MovieLens
        raise SystemExit(f"liveupdate demo: no such file or folder: {args.data}")
    if args.data.is_dir() and args.format != "movielens":
        raise SystemExit(f"liveupdate demo: {args.data} is a folder; {args.format} reads a file")
    return f"{args.format}:{args.data.resolve()}"


def _check_args(args: argparse.Namespace) -> None:
    if not 1 <= args.port <= 65535:
        raise SystemExit("liveupdate demo: --port must be in [1, 65535]")
    if not 0 < args.qps <= 2000:
        raise SystemExit("liveupdate demo: --qps must be in (0, 2000]")
    if not 0 <= args.drift <= 10_000:
        raise SystemExit("liveupdate demo: --drift must be in [0, 10000]")
    if not 1 <= args.sync_period <= 86_400:
        raise SystemExit("liveupdate demo: --sync-period must be in [1, 86400] s")
    if not 1 <= args.rebase_period <= 86_400:
        raise SystemExit("liveupdate demo: --rebase-period must be in [1, 86400] s")
    if not 0 <= args.transfer <= 3600:
        raise SystemExit("liveupdate demo: --transfer must be in [0, 3600] s")
    if not 0 <= args.pretrain_events <= 10**8:
        raise SystemExit("liveupdate demo: --pretrain-events must be in [0, 1e8]")
    if not 0 <= args.seed < 2**32:
        raise SystemExit("liveupdate demo: --seed must be in [0, 2**32)")
    if not args.host.strip():
        raise SystemExit("liveupdate demo: --host must not be empty")


def _children(args, spec: str, tokens: dict[str, str], data_dir: Path, env: dict) -> list:
    from controlplane.supervisor import Child

    cli = [sys.executable, "-m", "controlplane.cli"]
    logs = data_dir / "logs"
    base = str(data_dir / "demo-base.ckpt")
    url = f"http://{args.host}:{args.port}"
    common = ["--replay", spec, "--seed", str(args.seed), "--checkpoint", base]
    # nodes and cluster replay from where pretraining stopped: no model is scored on its own
    # training events
    replay = [*common, "--skip-events", str(args.pretrain_events)]
    node = [*replay, "--control-plane", url, "--qps", str(args.qps), "--no-pin"]
    worker = [sys.executable, "-m", "celery", "-A", "controlplane", "worker", "-B"]
    worker += ["--pool", "solo", "-Q", "controlplane", "-n", "controlplane@%h", "--loglevel"]
    worker += ["INFO", "-s", str(data_dir / "celerybeat-schedule")]
    cluster = [*cli, "cluster", "run", *replay, "--qps", str(args.qps)]
    cluster += ["--sync-period", str(args.sync_period)]  # and how often it reads the policy
    cluster += ["--transfer", str(args.transfer)]
    specs = {
        "web": [*cli, "serve", "--host", args.host, "--port", str(args.port)],
        "celery": worker,
        **{
            name: [*cli, "node", "run", "--name", name, "--token", tokens[name], *node]
            for name in NODES
        },
        **{
            name: [*cluster, "--node-socket", str(data_dir / f"node-{node}" / "control.sock")]
            for name, node in CLUSTERS.items()
        },
    }
    return [Child(name, argv, env, logs / f"{name}.log") for name, argv in specs.items()]


def _wait_for_web(url: str, stop: threading.Event, supervisor, timeout_s: float = 120) -> bool:
    """Print the URL only once the dashboard answers (False: stopped, or it never came up)."""
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}api/health/", timeout=5):
                return True
        except OSError:
            pass  # not listening yet (an HTTP error is an OSError too: 503 while migrating)
        if stop.wait(0.5):
            return False
        supervisor.poll(report=lambda line: print(line, flush=True))
    print(f"liveupdate demo: the web server did not answer on {url}; see its log", file=sys.stderr)
    return False


def _prepare_base(args, spec: str, path: Path, env: dict, stop: threading.Event) -> int:
    """Pretrain the base model (0; 130: stopped meanwhile; 1: failed)."""
    print("Preparing the base model (pretraining on the stream's first events)...", flush=True)
    init = [sys.executable, "-m", "controlplane.cli", "cluster", "init", "--replay", spec]
    init += ["--seed", str(args.seed), "--checkpoint", str(path)]
    init += ["--pretrain-events", str(args.pretrain_events)]
    prepared = subprocess.Popen(init, env=env, stdout=subprocess.DEVNULL)
    while prepared.poll() is None:
        if stop.wait(0.2):
            prepared.terminate()
            prepared.wait()
            return 130
    if prepared.returncode != 0:
        print("liveupdate demo: preparing the base model failed", file=sys.stderr)
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    _check_args(args)
    spec = _replay_spec(args)
    for name in ("DATABASE_URL", "REDIS_URL", "NODE_BROKER_URL", "NODE_RESULT_BACKEND"):
        os.environ.pop(name, None)  # the demo is the embedded mode, whatever the shell has set
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django
    from django.conf import settings
    from django.core.management import call_command

    from controlplane.supervisor import Supervisor

    django.setup()
    data_dir = settings.DATA_DIR
    call_command("migrate", interactive=False, verbosity=0)
    username, password = ensure_demo_admin(data_dir)
    tokens = ensure_demo_nodes(args.rebase_period)
    env = {**os.environ, "LIVEUPDATE_DATA_DIR": str(data_dir), "PYTHONUNBUFFERED": "1"}

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    prepared = _prepare_base(args, spec, data_dir / "demo-base.ckpt", env, stop)
    if prepared != 0:
        return prepared
    register_base_checkpoint(data_dir / "demo-base.ckpt")
    experiment = DemoExperiment(args, data_dir, env) if DemoExperiment.needed() else None
    supervisor = Supervisor()
    try:
        for child in _children(args, spec, tokens, data_dir, env):
            supervisor.add(child)
        url = f"http://{args.host}:{args.port}/"
        if not _wait_for_web(url, stop, supervisor):
            return 130 if stop.is_set() else 1
        print(f"LiveUpdate dashboard: {url}  (login: {username} / {password})", flush=True)
        nodes = ", ".join(f"{n} ({p})" for n, p in NODES.items())
        print(f"Nodes: {nodes}; logs in {data_dir / 'logs'}", flush=True)
        if experiment is not None:  # after the dashboard answers: it never waits for the run
            experiment.start()
            print("A short experiment run starts in the background (experiment.log).", flush=True)
        print("Press Ctrl-C to stop.", flush=True)
        while not stop.wait(1.0):
            supervisor.poll(report=lambda line: print(line, flush=True))
            if experiment is not None:
                experiment.poll(url)
    finally:
        print("Stopping...", flush=True)
        if experiment is not None:
            experiment.stop()
        supervisor.stop()
    print("Stopped.", flush=True)
    return 0
