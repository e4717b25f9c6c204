"""Telemetry from the node to the control plane: about one sample a second, sequence-numbered
within the spool's epoch, spooled to local disk before it is sent (nodeworker.telemetry_spool),
sent in batches, and resent after an outage or a restart. Ingest is idempotent on
(node, epoch, seq), so resending what may have arrived is safe; the spool makes sure nothing
that was collected is lost, even across kill -9."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.protocol.events import NodeEvent
from nodeworker.telemetry_spool import Spool

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
    events: list[NodeEvent] = field(default_factory=list)

    def to_sample(self, seq: int, ts: float) -> dict[str, Any]:
        sample = {"seq": seq, "ts": ts, **self.__dict__}
        sample = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in sample.items()}
        return sample | {"events": [event.to_wire() for event in self.events]}


class CpuSampler:
    """Per-core busy % between two reads of /proc/stat (under ``root`` for tests)."""

    def __init__(self, root: str | Path = "/"):
        self.path = Path(root) / "proc/stat"
        self._last = self._read()

    def _read(self) -> dict[int, tuple[int, int]]:
        """cpu -> (busy jiffies, total jiffies)."""
        out: dict[int, tuple[int, int]] = {}
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


class TelemetryReporter:
    """Collects a sample every ``interval_s`` (``collect()`` -> NodeSnapshot) into the spool;
    a sender thread posts pending samples in order, backing off while the plane is away.

    It never gives up on good data: batches stay under ``batch_max_bytes`` (below the plane's
    limit) and are split on 413; samples the plane refuses (400 field errors, 409 conflicts) are
    set aside with the plane's reason and the rest is resent; a batch answered 5xx
    ``bisect_after`` times in a row is halved until one sample is left, and that sample is set
    aside only when the next sample is then accepted (the plane works, that sample breaks it).
    Both threads are supervised: an error (a full disk) is logged and the loop goes on.
    ``running`` (optional) says what the node runs now; each batch carries it, so the plane
    re-sends a policy or a rebase the node lacks (controlplane.services.desired)."""

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
        batch_max_bytes: int = protocol_telemetry.MAX_BATCH_BYTES // 2,
        bisect_after: int = 3,
        running: Callable[[], protocol_telemetry.RunningState] | None = None,
    ):
        protocol.node_queue(node)  # validates the name
        self.node = node
        self.url = control_plane.rstrip("/") + protocol.TELEMETRY_PATH
        self.token = token
        self.spool = Spool(spool_dir)
        self.collect = collect
        self.running = running  # what the node runs, echoed in every batch (desired state)
        self.interval_s = interval_s
        self.batch_max = max(1, min(batch_max, protocol_telemetry.MAX_SAMPLES_PER_BATCH))
        self.batch_max_bytes = min(batch_max_bytes, protocol_telemetry.MAX_BATCH_BYTES - 1024)
        self.timeout_s = timeout_s
        self.max_backoff_s = max_backoff_s
        self.bisect_after = bisect_after
        self.sent = 0  # samples accepted by the plane (this process)
        self.failures = 0
        self.set_aside = 0  # samples moved to rejected.jsonl (this process)
        self.last_error: str | None = None
        self._window = self.batch_max  # samples per batch now (halved by 413 and bisection)
        self._strikes = 0  # 5xx answers in a row to the batch at the head of the spool
        self._session = requests.Session()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def record(self) -> dict[str, Any]:
        """Collect one sample and spool it; invalid samples are a bug and raise."""
        snapshot = self.collect()

        def make(seq: int) -> dict[str, Any]:
            sample = snapshot.to_sample(seq, time.time())
            errors = protocol_telemetry.validate_sample(sample, "sample")
            if errors:
                raise protocol_telemetry.TelemetryError(errors)
            return sample

        sample = self.spool.append(make)
        self._wake.set()
        return sample

    def _post(self, batch: list[dict[str, Any]]) -> requests.Response | None:
        body: dict[str, Any] = {"node": self.node, "epoch": self.spool.epoch, "samples": batch}
        if self.running is not None:
            running = self.running()
            body["running"] = {
                "policy_version": running.policy_version,
                "checkpoint": running.checkpoint,
            }
        try:
            return self._session.post(
                self.url,
                # compact, as the spool measures the byte cap
                data=json.dumps(body, separators=(",", ":"), allow_nan=False).encode(),
                headers={
                    "Authorization": f"Node {self.token}",
                    "Content-Type": "application/json",
                },
                timeout=self.timeout_s,
            )
        except requests.RequestException as exc:
            self._failed(f"{type(exc).__name__}: {exc}")
            return None

    def flush_once(self) -> bool:
        """Post the oldest pending batch. True when the spool is now empty."""
        batch = self.spool.pending(self._window, self.batch_max_bytes)
        if not batch:
            return True
        response = self._post(batch)
        if response is None:
            return False
        code = response.status_code
        if response.ok:
            self._accepted(batch)
        elif code in (400, 409):
            self._refused(batch, _json_or_text(response))
        elif code == 413:
            self._too_large(batch, response)
        elif code >= 500:
            self._server_error(batch, response)
        else:  # 401/403/404...: a setting to fix (a rotated token), never a reason to drop data
            self._failed(f"HTTP {code}: {response.text[:200]}")
            return False
        return not self.spool.pending(1)

    def _accepted(self, batch: list[dict[str, Any]]) -> None:
        self.spool.ack([s["seq"] for s in batch])
        self.sent += len(batch)
        self.last_error = None
        self._strikes = 0
        self._window = min(self.batch_max, self._window * 2)

    def _set_aside(self, samples: list[dict[str, Any]], reason: Any) -> None:
        log.error(
            "telemetry: setting aside %d sample(s) (seq %s..%s): %s",
            len(samples),
            samples[0]["seq"],
            samples[-1]["seq"],
            str(reason)[:500],
        )
        self.spool.reject(samples, reason)
        self.set_aside += len(samples)
        self._strikes = 0

    def _refused(self, batch: list[dict[str, Any]], body: Any) -> None:
        """400 field errors (``samples[i].field``) or 409 conflicts (``conflicts``: seqs): set
        aside the samples named, resend the rest. Nothing named: bisect down to one sample."""
        named = _named_samples(batch, body)
        if named:
            self._set_aside(named, body)
        elif len(batch) > 1:
            self._window = max(1, len(batch) // 2)
        else:
            self._set_aside(batch, body)
        self.last_error = None

    def _too_large(self, batch: list[dict[str, Any]], response: requests.Response) -> None:
        if len(batch) > 1:
            self._window = max(1, len(batch) // 2)
        else:
            self._set_aside(batch, {"status": 413, "body": _json_or_text(response)})

    def _server_error(self, batch: list[dict[str, Any]], response: requests.Response) -> None:
        error = f"HTTP {response.status_code}: {response.text[:200]}"
        self._strikes += 1
        if self._strikes < self.bisect_after:
            self._failed(error)
            return
        if len(batch) > 1:
            self._window, self._strikes = max(1, len(batch) // 2), 0
            self._failed(error)
            return
        probe = self.spool.pending(2)[1:]  # the next sample: does the plane take anything?
        answer = self._post(probe) if probe else None
        if answer is not None and answer.ok:
            self._accepted(probe)
            self._set_aside(batch, {"status": response.status_code, "body": error})
        else:  # the plane fails for everything: wait, keep the sample
            self._strikes = 0
            self._failed(error)

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
        """Send until stopped; an error of any kind (a disk failing while an ack is recorded) is
        logged and retried with back-off, never the end of the thread."""
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            while not self._stop.is_set():
                try:
                    if self.flush_once():
                        backoff = 0.5
                        break
                    failed = self.last_error is not None
                except Exception as exc:
                    log.exception("telemetry sender failed; retrying")
                    self._failed(f"{type(exc).__name__}: {exc}")
                    failed = True
                if failed:
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


SAMPLE_PATH = re.compile(r"^samples\[(\d+)\]")


def _named_samples(batch: list[dict[str, Any]], body: Any) -> list[dict[str, Any]]:
    """The samples a 400 (field errors keyed ``samples[i]...``) or a 409 (``conflicts``: seqs)
    names."""
    if not isinstance(body, dict):
        return []
    if isinstance(body.get("conflicts"), list):
        seqs = set(body["conflicts"])
        return [s for s in batch if s["seq"] in seqs]
    indexes = {int(m.group(1)) for key in body if (m := SAMPLE_PATH.match(str(key)))}
    return [s for i, s in enumerate(batch) if i in indexes]


def _json_or_text(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text[:2000]
