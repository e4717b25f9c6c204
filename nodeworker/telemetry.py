"""Telemetry from the node to the control plane: about one sample a second, sequence-numbered,
spooled to local disk before it is sent, sent in batches, and resent after an outage or a
restart. Ingest is idempotent on (node, seq), so resending what may have arrived is safe; the
spool makes sure nothing that was collected is lost, even across kill -9.

Spool layout (one directory per node): ``spool.jsonl`` (append-only, one sample per line,
fsynced), ``acked`` (the highest seq the plane accepted, replaced atomically) and
``rejected.jsonl`` (batches the plane refused as invalid, kept for the operator).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from nodeworker import protocol

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NodeSnapshot:
    """What the runtime measured over the last second (one telemetry sample without seq/ts)."""

    qps: float
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    memory_overhead_bytes: float
    memory_overhead_pct: float
    trainer_samples_per_s: float
    trainer_duty: float
    throttle: str
    auc: float | None = None
    logloss: float | None = None
    freshness_lag_s: float | None = None
    skipped_batches: int = 0
    dropped_samples: int = 0
    tables: dict[str, dict[str, float]] = field(default_factory=dict)
    cpu_per_core: list[float] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)

    def to_sample(self, seq: int, ts: float) -> dict[str, Any]:
        sample = {"seq": seq, "ts": ts, **self.__dict__}
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sample.items()}


class CpuSampler:
    """Per-core busy % between two reads of /proc/stat (under ``root`` for tests)."""

    def __init__(self, root: str | Path = "/"):
        self.path = Path(root) / "proc/stat"
        self._last = self._read()

    def _read(self) -> dict[int, tuple[int, int]]:
        """cpu -> (busy jiffies, total jiffies)."""
        out = {}
        try:
            lines = self.path.read_text().splitlines()
        except OSError:
            return out
        for line in lines:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit():
                ticks = [int(x) for x in fields[:8]]  # guest time is already inside user
                idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
                out[int(name[3:])] = (sum(ticks) - idle, sum(ticks))
        return out

    def sample(self) -> list[float]:
        now = self._read()
        pcts = []
        for cpu in sorted(now):
            busy, total = now[cpu]
            busy0, total0 = self._last.get(cpu, (busy, total))
            dt = total - total0
            pcts.append(round(min(100.0, max(0.0, 100.0 * (busy - busy0) / dt)), 2) if dt else 0.0)
        self._last = now
        return pcts


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


class Spool:
    """Samples not yet accepted by the control plane, on disk first. Thread-safe."""

    def __init__(self, directory: str | Path, max_pending: int = 7 * 86400):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / "spool.jsonl"
        self.acked_path = self.dir / "acked"
        self.max_pending = max_pending
        self.lost_to_cap = 0
        self._lock = threading.Lock()
        self.acked = int(self.acked_path.read_text()) if self.acked_path.exists() else -1
        self._pending: list[dict[str, Any]] = []
        last = self.acked
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    sample = json.loads(line)
                except json.JSONDecodeError:  # torn last line of a kill -9: it was never sent
                    continue
                last = max(last, sample["seq"])
                if sample["seq"] > self.acked:
                    self._pending.append(sample)
        self.next_seq = last + 1
        self._compact()  # also drops a torn tail so new appends start on a fresh line

    def append(self, make: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        """Spool the sample ``make(seq)`` under the next sequence number (durable on return)."""
        with self._lock:
            sample = make(self.next_seq)
            line = json.dumps(sample, separators=(",", ":"), allow_nan=False)
            with self.path.open("a") as f:
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            self.next_seq += 1
            self._pending.append(sample)
            if len(self._pending) > self.max_pending:  # days of outage: keep the newest
                drop = len(self._pending) - self.max_pending
                self.lost_to_cap += drop
                log.warning("telemetry spool full: dropping the %d oldest samples", drop)
                self._ack(self._pending[drop - 1]["seq"])
            return sample

    def pending(self, limit: int) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._pending[:limit])

    def ack(self, seq: int) -> None:
        """The plane has every sample up to ``seq``."""
        with self._lock:
            self._ack(seq)

    def reject(self, samples: list[dict[str, Any]], errors: Any) -> None:
        """Keep a batch the plane refused as invalid next to the spool, then move past it."""
        with self._lock:
            with (self.dir / "rejected.jsonl").open("a") as f:
                f.write(json.dumps({"errors": errors, "samples": samples}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._ack(samples[-1]["seq"])

    def _ack(self, seq: int) -> None:
        if seq <= self.acked:
            return
        _replace(self.acked_path, str(seq))
        self.acked = seq
        self._pending = [s for s in self._pending if s["seq"] > seq]
        if not self._pending or self.next_seq - seq > 10_000:
            self._compact()

    def _compact(self) -> None:
        _replace(
            self.path,
            "".join(json.dumps(s, separators=(",", ":")) + "\n" for s in self._pending),
        )


class TelemetryReporter:
    """Collects a sample every ``interval_s`` (``collect()`` -> NodeSnapshot) into the spool;
    a sender thread posts pending samples in order, backing off while the plane is away."""

    def __init__(
        self,
        node: str,
        control_plane: str,
        token: str,
        spool_dir: str | Path,
        collect: Callable[[], NodeSnapshot],
        interval_s: float = 1.0,
        batch_max: int = 200,
        timeout_s: float = 5.0,
        max_backoff_s: float = 30.0,
    ):
        protocol.node_queue(node)  # validates the name
        self.node = node
        self.url = control_plane.rstrip("/") + protocol.TELEMETRY_PATH
        self.token = token
        self.spool = Spool(spool_dir)
        self.collect = collect
        self.interval_s = interval_s
        self.batch_max = min(batch_max, protocol.MAX_SAMPLES_PER_BATCH)
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.sent = 0  # samples accepted by the plane (this process)
        self.failures = 0
        self.last_error: str | None = None
        self._session = requests.Session()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def record(self) -> dict[str, Any]:
        """Collect one sample and spool it; invalid samples are a bug and raise."""
        snapshot = self.collect()

        def make(seq: int) -> dict[str, Any]:
            sample = snapshot.to_sample(seq, time.time())
            errors = protocol.validate_sample(sample, "sample")
            if errors:
                raise protocol.TelemetryError(errors)
            return sample

        sample = self.spool.append(make)
        self._wake.set()
        return sample

    def flush_once(self) -> bool:
        """Post the oldest pending batch. True when the spool is now empty."""
        batch = self.spool.pending(self.batch_max)
        if not batch:
            return True
        try:
            response = self._session.post(
                self.url,
                json={"node": self.node, "samples": batch},
                headers={"Authorization": f"Node {self.token}"},
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return False
        if response.status_code == 400:
            log.error(
                "control plane rejected telemetry seq %s..%s: %s",
                batch[0]["seq"],
                batch[-1]["seq"],
                response.text[:500],
            )
            self.spool.reject(batch, _json_or_text(response))
            return not self.spool.pending(1)
        if not response.ok:
            self._failed(f"HTTP {response.status_code}: {response.text[:200]}")
            return False
        self.spool.ack(batch[-1]["seq"])
        self.sent += len(batch)
        self.last_error = None
        return not self.spool.pending(1)

    def _failed(self, error: str) -> None:
        self.failures += 1
        if self.last_error is None:
            log.warning(
                "telemetry to %s failing (%s); spooling to %s", self.url, error, self.spool.dir
            )
        self.last_error = error

    def _collect_loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.record()
            except Exception:  # a broken collector must not stop telemetry for good
                log.exception("telemetry collection failed")
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _send_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            while not self._stop.is_set():
                if self.flush_once():
                    backoff = 0.5
                    break
                if self.last_error is not None:
                    self._stop.wait(backoff)
                    backoff = min(self.max_backoff_s, backoff * 2)

    def start(self) -> TelemetryReporter:
        for target in (self._collect_loop, self._send_loop):
            thread = threading.Thread(
                target=target, name=f"telemetry-{target.__name__}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, flush_timeout_s: float = 2.0) -> None:
        """Stop collecting; try once more to send what is spooled (the rest stays on disk)."""
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 1)
        deadline = time.monotonic() + flush_timeout_s
        while time.monotonic() < deadline and not self.flush_once() and self.last_error is None:
            pass


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]
