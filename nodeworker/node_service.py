"""One inference node as a supervised service: the NodeRuntime (inference + trainer process), the
node-local HTTP endpoint, the control channel the Celery tasks use, the telemetry reporter and the
optional traffic replayer. ``liveupdate node run`` starts it (and a Celery worker beside it);
the node's Celery worker starts it too when NODE_RUNTIME=1 (nodeworker/celery_app.py)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from nodeworker import protocol

if TYPE_CHECKING:  # imported when started: the Celery app imports this module without torch
    from dlrm_core.schema import StreamSchema
    from nodeworker.control_socket import ControlServer
    from nodeworker.http import NodeHTTPServer
    from nodeworker.replayer import Replayer
    from nodeworker.runtime import NodeRuntime
    from nodeworker.telemetry import TelemetryReporter

log = logging.getLogger(__name__)

FORMATS = ("criteo", "avazu", "movielens")


@dataclass(frozen=True)
class NodeSettings:
    name: str
    data_dir: Path
    checkpoint: str | None = None  # None: a fresh model for the replayed stream
    checkpoint_dir: Path | None = None  # rebases read only here; None: the checkpoint's folder
    control_plane: str | None = None
    token: str | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 0
    # bearer secret for POST /v1/feedback; None: only loopback clients may send labels
    feedback_secret: str | None = None
    replay: str | None = None  # "synthetic" or FORMAT:PATH
    skip_events: int = 0  # replay from this event on (the base was pretrained on the head)
    qps: float = 100.0
    label_delay_s: float = 1.0
    rows_per_request: int = 1
    label_window_s: float = 30.0
    sla_ms: float | None = None
    seed: int = 0
    trainer: bool = True
    pin: bool = True
    qos: bool = True

    def __post_init__(self) -> None:
        protocol.node_queue(self.name)  # ValueError naming the bad name
        if self.control_plane and not self.token:
            raise ValueError("a node token is required to report to a control plane")
        if self.skip_events < 0:
            raise ValueError(f"skip_events must be >= 0, got {self.skip_events}")
        if self.checkpoint is None and self.replay is None:
            raise ValueError("give a base checkpoint, or a stream to replay (fresh model)")

    @property
    def control_socket(self) -> Path:
        return self.data_dir / "control.sock"

    @staticmethod
    def default_data_dir(name: str, environ: Mapping[str, str] = os.environ) -> Path:
        return Path(environ.get("LIVEUPDATE_DATA_DIR") or "var").resolve() / f"node-{name}"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> NodeSettings:
        """NODE_NAME, NODE_CHECKPOINT, NODE_CHECKPOINT_DIR, NODE_CONTROL_PLANE, NODE_TOKEN,
        NODE_HTTP_HOST, NODE_HTTP_PORT, NODE_FEEDBACK_SECRET, NODE_REPLAY, NODE_SKIP_EVENTS,
        NODE_QPS, NODE_LABEL_DELAY, NODE_SLA_MS (a bad value raises ValueError naming the
        variable)."""

        def num(var: str, kind, default):
            raw = environ.get(var)
            try:
                return default if raw in (None, "") else kind(raw)
            except ValueError:
                raise ValueError(f"{var} must be a {kind.__name__}, got {raw!r}") from None

        name = environ.get("NODE_NAME", "")
        return cls(
            name=name,
            data_dir=cls.default_data_dir(name, environ),
            checkpoint=environ.get("NODE_CHECKPOINT") or None,
            checkpoint_dir=Path(environ["NODE_CHECKPOINT_DIR"])
            if environ.get("NODE_CHECKPOINT_DIR")
            else None,
            control_plane=environ.get("NODE_CONTROL_PLANE") or None,
            token=environ.get("NODE_TOKEN") or None,
            http_host=environ.get("NODE_HTTP_HOST", "127.0.0.1"),
            http_port=num("NODE_HTTP_PORT", int, 0),
            feedback_secret=environ.get("NODE_FEEDBACK_SECRET") or None,
            replay=environ.get("NODE_REPLAY") or None,
            skip_events=num("NODE_SKIP_EVENTS", int, 0),
            qps=num("NODE_QPS", float, 100.0),
            label_delay_s=num("NODE_LABEL_DELAY", float, 1.0),
            sla_ms=num("NODE_SLA_MS", float, None),
        )


SYNTHETIC_DEFAULTS = {"num_events": 10**9, "user_rows": 100_000, "item_rows": 50_000}


def synthetic_config(spec: str, seed: int):
    """The SyntheticConfig of ``synthetic`` or ``synthetic:field=value,...`` (numeric fields of
    dlrm_core.synthetic.SyntheticConfig, e.g. ``synthetic:drift_per_hour=20,batch_size=128``)."""
    import dataclasses

    from dlrm_core.synthetic import SyntheticConfig

    fields = {f.name: f for f in dataclasses.fields(SyntheticConfig)}
    values: dict = {**SYNTHETIC_DEFAULTS, "seed": seed}
    _, _, options = spec.partition(":")
    for item in filter(None, options.split(",")):
        key, _, raw = item.partition("=")
        default = getattr(SyntheticConfig, key, None) if key in fields else None
        if not isinstance(default, int | float) or key == "seed":
            raise ValueError(f"synthetic option {key!r}: not a numeric SyntheticConfig field")
        try:
            values[key] = type(default)(raw)
        except ValueError:
            raise ValueError(f"synthetic option {key}: {raw!r} is not a number") from None
    return SyntheticConfig(**values)


def open_source(spec: str, seed: int, skip: int = 0):
    """(stream of SparseBatches, its StreamSchema) for a replay spec, without its first
    ``skip`` events."""
    from nodeworker.replayer import skip_events

    if spec == "synthetic" or spec.startswith("synthetic:"):
        from dlrm_core.synthetic import SyntheticStream

        stream = SyntheticStream(synthetic_config(spec, seed))
        return skip_events(stream, skip), stream.schema
    kind, _, path = spec.partition(":")
    if kind not in FORMATS or not path:
        raise ValueError(
            f"replay must be synthetic[:k=v,...] or FORMAT:PATH ({', '.join(FORMATS)})"
        )
    from dlrm_core import readers

    reader_class = {
        "criteo": readers.CriteoReader,
        "avazu": readers.AvazuReader,
        "movielens": readers.MovieLensReader,
    }[kind]
    reader = reader_class(path)
    return skip_events(reader, skip), reader.schema


class NodeService:
    def __init__(self, settings: NodeSettings):
        self.settings = settings
        self.runtime: NodeRuntime | None = None
        self.http: NodeHTTPServer | None = None
        self.control: ControlServer | None = None
        self.reporter: TelemetryReporter | None = None
        self.replayer: Replayer | None = None
        self._stop = threading.Event()

    def start(self) -> NodeService:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        source = schema = None
        if s.replay:
            source, schema = open_source(s.replay, s.seed, s.skip_events)
        runtime = self.runtime = self._start_runtime(schema)
        self._start_endpoints(runtime)
        if source is not None:
            from nodeworker.replayer import ReplayConfig, Replayer

            config = ReplayConfig(
                qps=s.qps,
                label_delay_s=s.label_delay_s,
                rows_per_request=s.rows_per_request,
                seed=s.seed,
            )
            self.replayer = Replayer(runtime.predict, runtime.feedback, source, config).start()
        log.info(
            "node %s: serving on %s (POST /v1/predict, /v1/feedback), placement %s",
            s.name,
            self.http.url if self.http else "?",
            runtime.state.plan.as_dict(),
        )
        return self

    def _start_runtime(self, schema: StreamSchema | None) -> NodeRuntime:
        """The runtime on the given checkpoint (or a fresh one sized by the replayed stream's
        ``schema``), started and ready."""
        from nodeworker.runtime import NodeRuntime, RuntimeConfig, build_fresh_checkpoint

        s = self.settings
        checkpoint = s.checkpoint
        if checkpoint is None:  # NodeSettings: a stream is replayed, its schema sizes the model
            assert schema is not None
            checkpoint = build_fresh_checkpoint(schema, s.data_dir / "fresh-base.ckpt", s.seed)
        policy = protocol.DEFAULT_POLICY
        if s.sla_ms is not None:
            policy = replace(policy, sla_p99_ms=s.sla_ms)
        runtime = NodeRuntime(
            RuntimeConfig(
                name=s.name,
                data_dir=s.data_dir,
                checkpoint=checkpoint,
                checkpoint_dir=s.checkpoint_dir,
                policy=policy,
                trainer=s.trainer,
                pin=s.pin,
                qos=s.qos,
                label_window_s=s.label_window_s,
            )
        ).start()
        self.runtime = runtime  # stop() stops it should the rest fail
        runtime.wait_ready()
        return runtime

    def _start_endpoints(self, runtime: NodeRuntime) -> None:
        """The HTTP endpoint, the control socket and (with a control plane) the telemetry
        reporter."""
        from nodeworker.control_socket import ControlServer
        from nodeworker.http import NodeHTTPServer
        from nodeworker.telemetry import TelemetryReporter

        s = self.settings
        self.http = NodeHTTPServer(
            runtime, s.http_host, s.http_port, feedback_secret=s.feedback_secret
        ).start()
        self.control = ControlServer(s.control_socket, runtime.operations).start()
        if s.control_plane:
            self.reporter = TelemetryReporter(
                s.name,
                s.control_plane,
                s.token or "",
                s.data_dir / "telemetry",
                runtime.telemetry_snapshot,
                running=runtime.running_state,
            ).start()

    def supervise(self) -> None:
        """Restart a dead trainer (from the latest snapshot); a failure is logged."""
        try:
            if self.runtime is not None:
                self.runtime.operations.supervise()
        except Exception:
            log.exception("supervising the runtime failed")

    def supervise_forever(self) -> None:
        """supervise() every second until stop()."""
        while not self._stop.wait(1.0):
            self.supervise()

    def stop(self) -> None:
        self._stop.set()
        for part in (self.replayer, self.reporter, self.control, self.http, self.runtime):
            if part is not None:
                part.stop()
