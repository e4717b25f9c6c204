"""The QoS controller: keeps inference P99 inside the SLA by throttling the co-located trainer.

Inference reports every request latency and the request queue depth; once per control period
``QosController.step`` looks at the P99 over a sliding window and moves the trainer's duty cycle
(the fraction of wall time it may compute) with AIMD: additive increase while P99 is comfortably
below the SLA, multiplicative decrease when it gets near, and a pause while it is over. The
trainer obeys the duty through ``DutyCycle``. Every change is kept as a telemetry 'qos' event.

The increase threshold sits just below the decrease threshold (headroom 0.85, near 0.9 of the
SLA): with an SLA close to what inference achieves alone (the node bench sets 1.15 x its P99), a
wider hold band (0.7) lay below inference's own P99, so the duty could only ever fall; with
latencies that did not depend on the trainer at all (the scripted trace of
test_latency_noise_the_trainer_does_not_cause..., SLA 1.15 x its P99) the mean duty was 0.10
with the wide band, 0.72 with this one (what is left is the 2 s window's P99 noise, which
crosses 0.9 x SLA on its own).

After a decrease only latencies observed since it count (once there are ``min_samples`` of them):
a window holds many control periods, and judging the new duty by the spike that caused the cut
halved the duty again every period until the spike slid out (one 100 ms stall took a 2 s window
and 0.25 s periods from duty 1 to 0.004).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, replace

from nodeworker.protocol.events import NodeEvent


class LatencyWindow:
    """Latencies of the last ``window_s`` seconds (at most ``max_count`` of them), with exact
    nearest-rank quantiles. Sorting a few thousand floats once a second is cheaper than keeping a
    histogram that must also forget; thread-safe for one writer and readers."""

    def __init__(self, window_s: float, max_count: int = 200_000):
        if window_s <= 0:
            raise ValueError("window_s must be > 0")
        self.window_s = window_s
        self._items: deque[tuple[float, float]] = deque(maxlen=max_count)
        self._lock = threading.Lock()

    def add(self, latency_ms: float, now: float) -> None:
        with self._lock:
            self._items.append((now, latency_ms))
            # trimmed here too, not only when read: RuntimeMetrics' window is read by the
            # telemetry reporter only, so a node without one (the benches' nodes) kept every
            # request up to max_count, ~110 bytes a tuple: +314 KiB in 30 s at 170 req/s
            # (tracemalloc, inference of a node without trainer), ~22 MiB at the cap
            self._trim(now)

    def _trim(self, now: float) -> None:
        cutoff = now - self.window_s
        while self._items and self._items[0][0] < cutoff:
            self._items.popleft()

    def count(self, now: float, since: float | None = None) -> int:
        """Latencies in the window (only those observed at or after ``since``, if given)."""
        with self._lock:
            self._trim(now)
            if since is None:
                return len(self._items)
            return sum(1 for t, _ in self._items if t >= since)

    def quantiles(
        self, now: float, qs: tuple[float, ...], since: float | None = None
    ) -> tuple[float | None, ...]:
        """Nearest-rank quantiles (None for an empty window), of the latencies observed at or
        after ``since`` if given."""
        with self._lock:
            self._trim(now)
            start = -math.inf if since is None else since
            values = sorted(v for t, v in self._items if t >= start)
        if not values:
            return tuple(None for _ in qs)
        return tuple(
            values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))] for q in qs
        )


@dataclass(frozen=True)
class QosConfig:
    sla_p99_ms: float = 50.0
    window_s: float = 2.0  # P99 over the last window_s seconds
    headroom: float = 0.85  # increase only while P99 < headroom x SLA
    near: float = 0.9  # decrease when P99 >= near x SLA (or the queue is too deep)
    increase: float = 0.05  # additive step of the duty cycle
    decrease: float = 0.5  # multiplicative factor
    min_duty: float = 0.02
    max_duty: float = 1.0
    max_queue_depth: int = 32
    min_samples: int = 20  # fewer latencies than this: too little traffic to hurt, increase

    def __post_init__(self) -> None:
        if not 0 < self.headroom <= self.near <= 1:
            raise ValueError("need 0 < headroom <= near <= 1")
        if not 0 < self.min_duty <= self.max_duty <= 1:
            raise ValueError("need 0 < min_duty <= max_duty <= 1")
        if not 0 < self.decrease < 1 or self.increase <= 0 or self.sla_p99_ms <= 0:
            raise ValueError("need 0 < decrease < 1, increase > 0 and sla_p99_ms > 0")


@dataclass(frozen=True)
class Decision:
    ts: float
    action: str  # increase | decrease | pause | hold | operator_pause
    duty: float  # the AIMD duty (kept while paused, so resuming starts from it)
    effective_duty: float  # what the trainer may use now: 0 while paused
    state: str  # running | throttled | paused (protocol_telemetry.THROTTLE_STATES)
    p99_ms: float | None
    queue_depth: int
    reason: str

    def event(self) -> NodeEvent:
        detail = {
            "action": self.action,
            "duty": round(self.duty, 4),
            "state": self.state,
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
            "queue_depth": self.queue_depth,
            "reason": self.reason,
        }
        return NodeEvent("qos", self.ts, detail)


class QosController:
    def __init__(self, config: QosConfig | None = None, start_duty: float | None = None):
        self.config = config or QosConfig()
        self.latencies = LatencyWindow(self.config.window_s)
        self.duty = self.config.max_duty if start_duty is None else start_duty
        self.queue_depth = 0
        self.operator_paused = False
        self.decreased_at = -math.inf  # when the duty was last cut (pause or decrease)
        self.last: Decision | None = None
        self._events: list[NodeEvent] = []
        self._lock = threading.Lock()

    def observe(self, latency_ms: float, now: float | None = None) -> None:
        self.latencies.add(latency_ms, time.time() if now is None else now)

    def observe_queue_depth(self, depth: int) -> None:
        self.queue_depth = depth

    def set_policy(self, sla_p99_ms: float, max_duty: float) -> None:
        with self._lock:
            self.config = replace(
                self.config,
                sla_p99_ms=sla_p99_ms,
                max_duty=max_duty,
                min_duty=min(self.config.min_duty, max_duty),
            )
            self.duty = min(self.duty, max_duty)

    def set_operator_pause(self, paused: bool) -> None:
        with self._lock:
            self.operator_paused = paused

    def step(self, now: float | None = None) -> Decision:
        now = time.time() if now is None else now
        with self._lock:
            c = self.config
            n = self.latencies.count(now)
            since = self.decreased_at if self.decreased_at > now - c.window_s else None
            fresh = n if since is None else self.latencies.count(now, since)
            (p99,) = self.latencies.quantiles(now, (0.99,), since)
            depth = self.queue_depth
            judged = n >= c.min_samples and fresh >= c.min_samples and p99 is not None
            over = judged and p99 is not None and p99 > c.sla_p99_ms
            near = judged and p99 is not None and p99 >= c.near * c.sla_p99_ms
            deep = depth > c.max_queue_depth
            last = self.last
            was_paused = (
                last is not None and last.state == "paused" and last.action != "operator_pause"
            )
            if self.operator_paused:
                action, reason = "operator_pause", "paused by the operator"
            elif n >= c.min_samples and fresh < c.min_samples and not deep:
                # too few latencies since the last cut to judge it: keep it (and a pause)
                action, reason = "hold", f"{fresh} requests since the last decrease"
                over = was_paused
            elif over:
                action, reason = "pause", f"P99 {p99:.2f} ms > SLA {c.sla_p99_ms:g} ms"
                self.duty = max(c.min_duty, self.duty * c.decrease)
                self.decreased_at = now
            elif near or deep:
                action = "decrease"
                reason = (
                    f"queue depth {depth} > {c.max_queue_depth}"
                    if deep
                    else f"P99 {p99:.2f} ms >= {c.near:g} x SLA"
                )
                self.duty = max(c.min_duty, self.duty * c.decrease)
                self.decreased_at = now
            elif n < c.min_samples or (p99 is not None and p99 < c.headroom * c.sla_p99_ms):
                action = "increase" if self.duty < c.max_duty else "hold"
                reason = (
                    f"{n} requests in {c.window_s:g} s"
                    if n < c.min_samples
                    else f"P99 {p99:.2f} ms < {c.headroom:g} x SLA"
                )
                self.duty = min(c.max_duty, self.duty + c.increase)
                if c.max_duty - self.duty < 1e-9:  # 0.5 + 5 x 0.1 is 0.9999...
                    self.duty = c.max_duty
            else:
                action, reason = "hold", "P99 between headroom and near"
            paused = self.operator_paused or over
            state = "paused" if paused else ("running" if self.duty >= c.max_duty else "throttled")
            decision = Decision(
                now, action, self.duty, 0.0 if paused else self.duty, state, p99, depth, reason
            )
            changed = self.last is None or state != self.last.state
            if changed or action in ("increase", "decrease", "pause"):
                self._events.append(decision.event())
            self.last = decision
            return decision

    def drain_events(self) -> list[NodeEvent]:
        with self._lock:
            events, self._events = self._events, []
            return events


class DutyCycle:
    """Token bucket that lets the trainer compute ``duty`` of wall time: credit accrues at
    ``duty`` seconds per second (capped at ``burst_s``) and every step spends its duration."""

    def __init__(self, burst_s: float = 0.05, clock=time.monotonic):
        self.burst_s = burst_s
        self.clock = clock
        self.credit = 0.0
        self._last = clock()

    def wait_time(self, duty: float) -> float:
        """Seconds to wait before the next step may start (0: go now)."""
        now = self.clock()
        self.credit = min(self.burst_s, self.credit + duty * (now - self._last))
        self._last = now
        if duty <= 0:  # paused means paused, whatever credit is left
            self.credit = min(self.credit, 0.0)
            return math.inf
        if self.credit > -1e-9:  # float dust from the accrual must not stall the loop
            return 0.0
        return -self.credit / duty

    def spend(self, seconds: float) -> None:
        self.credit -= seconds
