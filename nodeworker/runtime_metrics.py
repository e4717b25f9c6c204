"""What the runtime measures for telemetry and benchmarks: request latency and QPS, windowed
AUC / log loss of served scores against joined labels, trainer throughput, the freshness lag
(label arrival until inference serves a factor version trained on it; on a delta-sync node,
the age of the newest label its last sync learnt), and what stalls the
inference process besides its own work: garbage-collector pauses (every thread waits for them)
and factor-version installs (the inference lock is held while a version is swapped in); and the
node's LoRA memory as the OS measures it (MeasuredMemory)."""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_core.metrics import auc, log_loss
from nodeworker.qos import LatencyWindow
from nodeworker.trainer_messages import TrainerStats


def touched(capacity: int, dtype: type = np.float64) -> np.ndarray:
    """A zeroed array whose pages are written now: a fixed-size ring's memory is resident from
    the start (np.zeros maps zero pages, which the OS counted only as the ring filled, so a
    bounded buffer read as memory growing with time)."""
    out: np.ndarray = np.empty(capacity, dtype=dtype)
    out.fill(0)
    return out


class LagRing:
    """The newest ``capacity`` freshness lags and the time each version was served at, in two
    numpy arrays: 12 bytes a lag (a deque of (time, lag) tuples held about 100, 10 MiB on the
    inference process at its 100k cap, which it reached in a minute of training)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._times = touched(capacity)
        self._lags = touched(capacity, np.float32)
        self._count = 0  # lags ever added

    def extend(self, served_at: float, label_times: list[float]) -> None:
        """The lags of labels that arrived at ``label_times``, served from ``served_at``."""
        lags = np.maximum(0.0, served_at - np.asarray(label_times, dtype=np.float64))
        lags = lags[-self.capacity :]
        start = self._count % self.capacity
        first = min(len(lags), self.capacity - start)
        self._lags[start : start + first] = lags[:first]
        self._times[start : start + first] = served_at
        rest = len(lags) - first
        self._lags[:rest] = lags[first:]
        self._times[:rest] = served_at
        self._count += len(lags)

    def since(self, since: float) -> list[float]:
        """The lags of versions served at or after ``since`` (in no particular order)."""
        held = min(self._count, self.capacity)
        keep = self._times[:held] >= since
        return self._lags[:held][keep].astype(np.float64).tolist()


INSTALLS_KEPT = 10_000  # version installs timed: 33 min at the trainer's 5 versions a second
GC_PAUSES_KEPT = 10_000  # collections timed: an hour at three a second
# latencies kept for benchmarks: 300 s at 1,700 requests a second (float32: 2 MiB a ring)
LATENCIES_KEPT = 1 << 19


class TimedRing:
    """The newest ``capacity`` timed events (time, two values) in three preallocated arrays:
    version installs (copy seconds, locked seconds), garbage-collector pauses (seconds,
    generation). A deque of tuples grew ~144 bytes an event, 14 MiB at 100k."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._columns = [touched(capacity) for _ in range(3)]  # time, copy s, locked s
        self._count = 0
        # reentrant: a collection (gc_callback appends) may start while this thread reads
        self._lock = threading.RLock()

    def append(self, item: tuple[float, float, float]) -> None:
        with self._lock:
            at = self._count % self.capacity
            for column, value in zip(self._columns, item, strict=True):
                column[at] = value
            self._count += 1

    def since(self, since: float) -> list[tuple[float, float]]:
        """The two values of the events at or after ``since``, oldest first."""
        with self._lock:
            held = min(self._count, self.capacity)
            order = (np.arange(held) + self._count - held) % self.capacity
            times, copy, locked = (c[order] for c in self._columns)
        keep = times >= since
        return list(zip(copy[keep].tolist(), locked[keep].tolist(), strict=True))

    def __len__(self) -> int:
        return min(self._count, self.capacity)


class ValueRing:
    """The newest ``capacity`` values (float32) in a preallocated array, for benchmarks (a
    deque of a million boxed floats grew to 32 MiB with time)."""

    def __init__(self, capacity: int) -> None:
        self._values = touched(capacity, np.float32)
        self._count = 0
        self._lock = threading.Lock()  # requests finish on many threads

    def append(self, value: float) -> None:
        with self._lock:
            self._values[self._count % len(self._values)] = value
            self._count += 1

    def clear(self) -> None:
        with self._lock:
            self._count = 0

    def values(self) -> np.ndarray:
        """The values held, oldest first."""
        with self._lock:
            held = min(self._count, len(self._values))
            return np.roll(self._values, -self._count)[-held:] if held else self._values[:0]

    def __len__(self) -> int:
        return min(self._count, len(self._values))

    def __iter__(self) -> Iterator[float]:
        return iter(self.values().tolist())


class RuntimeMetrics:
    def __init__(self, quality_window_s: float = 60.0, max_rows: int = 50_000):
        self.latency = LatencyWindow(window_s=1.0)
        self.all_latencies = ValueRing(LATENCIES_KEPT)  # for benchmarks
        # for benchmarks: time under the inference lock per request (latency minus queueing)
        self.all_service_ms = ValueRing(LATENCIES_KEPT)
        self.gc_pauses = TimedRing(GC_PAUSES_KEPT)  # (ts, seconds, generation)
        # (ts, seconds copying the version out off the lock, seconds holding the inference lock)
        self.installs = TimedRing(INSTALLS_KEPT)
        self._gc_started = 0.0
        self.quality_window_s = quality_window_s
        self.max_rows = max_rows
        # (time, labels, scores) as the join reports them, a few times a second: one append
        # each, not one per row, on the inference process
        self._quality: deque[tuple[float, np.ndarray, np.ndarray]] = deque()
        self._quality_rows = 0
        self._installs: list[tuple[int, float]] = []  # (version, time), ascending
        self._fresh_pending: list[tuple[int, list[float]]] = []
        self._lags = LagRing(100_000)
        self._synced_label_at: float | None = None  # a delta-sync node's newest label learnt
        self._samples = (0.0, 0)  # (time, trainer samples) of the last stats
        self.trainer_rate = 0.0
        # batches skipped by the trainers that stopped, and by the running one (its own
        # counter starts at 0: a restart must not read as a negative count)
        self._skipped = (0, 0)
        self.trained_samples = 0
        self._lock = threading.Lock()

    def served(self, latency_ms: float, service_ms: float, now: float) -> None:
        self.latency.add(latency_ms, now)
        self.all_latencies.append(latency_ms)
        self.all_service_ms.append(service_ms)

    def gc_callback(self, phase: str, info: dict[str, int]) -> None:
        """For gc.callbacks. Collections never overlap (the collecting thread holds the GIL)."""
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            pause = time.perf_counter() - self._gc_started
            self.gc_pauses.append((time.time(), pause, float(info["generation"])))

    def joined(self, labels: np.ndarray, scores: np.ndarray, now: float) -> None:
        keep = np.isfinite(scores)
        if not keep.any():
            return
        with self._lock:
            self._quality.append((now, labels[keep], scores[keep]))
            self._quality_rows += int(keep.sum())
            while self._quality_rows - len(self._quality[0][1]) >= self.max_rows:
                self._quality_rows -= len(self._quality.popleft()[1])

    def installed(self, version: int, now: float, read_s: float, locked_s: float) -> None:
        self.installs.append((now, read_s, locked_s))
        with self._lock:
            self._installs.append((version, now))
            del self._installs[:-1000]
            self._resolve()

    def synced(self, landed_at: float, label_at: float | None) -> None:
        """A delta landed (apply_delta): its model knows labels up to ``label_at`` (the
        cluster's stamp; the landing itself when the cluster sent none)."""
        with self._lock:
            self._synced_label_at = min(landed_at, label_at) if label_at else landed_at

    def trained(self, stats: TrainerStats, now: float) -> None:
        with self._lock:
            t0, s0 = self._samples
            if t0 and now > t0:
                self.trainer_rate = max(0.0, (stats.samples - s0) / (now - t0))
            self._samples = (now, stats.samples)
            self.trained_samples = stats.samples
            self._skipped = (self._skipped[0], stats.skipped)
            self._fresh_pending.extend(stats.fresh)
            self._resolve()

    @property
    def skipped(self) -> int:
        """Batches skipped by every trainer this node ran (non-decreasing)."""
        return sum(self._skipped)

    def trainer_started(self) -> None:
        """A new trainer process: its counters start again at 0."""
        with self._lock:
            self._skipped = (sum(self._skipped), 0)
            self._samples = (0.0, 0)

    def _resolve(self) -> None:
        versions = [v for v, _ in self._installs]
        waiting = []
        for version, times in self._fresh_pending:
            i = bisect.bisect_left(versions, version)
            if i == len(versions):
                waiting.append((version, times))
                continue
            served_at = self._installs[i][1]
            self._lags.extend(served_at, times)
        self._fresh_pending = waiting[-1000:]

    def lags(self, since: float = 0.0) -> list[float]:
        with self._lock:
            return self._lags.since(since)

    def stalls(self, since: float = 0.0) -> dict[str, Any]:
        """GC pauses and version installs since ``since`` (time.time()), summed up."""
        pauses = [s for s, _ in self.gc_pauses.since(since)]
        installs = self.installs.since(since)
        return {
            "gc_pauses": len(pauses),
            "gc_pause_total_ms": round(1000 * sum(pauses), 2),
            "gc_pause_max_ms": round(1000 * max(pauses, default=0.0), 2),
            "installs": len(installs),
            "install_read_mean_ms": round(
                1000 * sum(b for b, _ in installs) / max(1, len(installs)), 3
            ),
            "install_locked_max_ms": round(1000 * max((h for _, h in installs), default=0.0), 3),
        }

    def window(self, now: float) -> dict[str, Any]:
        """The telemetry metrics of the last second (quality over quality_window_s)."""
        qps = self.latency.count(now)
        p50, p95, p99 = self.latency.quantiles(now, (0.5, 0.95, 0.99))
        with self._lock:
            cutoff = now - self.quality_window_s
            chunks = [(y, p) for t, y, p in self._quality if t >= cutoff]
        labels = np.concatenate([y for y, _ in chunks]) if chunks else np.zeros(0)
        scores = np.concatenate([p for _, p in chunks]) if chunks else np.zeros(0)
        rows = len(labels) > 0
        both_classes = rows and 0 < labels.sum() < len(labels)
        recent = self.lags(now - 5.0)
        with self._lock:
            synced = self._synced_label_at
        if recent:
            fresh: float | None = float(np.median(recent))
        else:  # a delta-sync node: its served model grows older until the next sync lands
            fresh = max(0.0, now - synced) if synced is not None else None
        return {
            "qps": float(qps),
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "auc": float(auc(labels, scores)) if both_classes else None,
            "logloss": float(log_loss(labels, scores)) if rows else None,
            "freshness_lag_s": fresh,
            "trainer_samples_per_s": self.trainer_rate,
        }


ROLLUP_FIELDS = (
    "Rss",
    "Pss",
    "Pss_Anon",
    "Pss_File",
    "Pss_Shmem",
    "Private_Dirty",
    "Shared_Clean",
    "Shared_Dirty",
)


def smaps_rollup(pid: int) -> dict[str, int] | None:
    """Bytes of ROLLUP_FIELDS of a process (/proc/<pid>/smaps_rollup) and Shared (clean +
    dirty); None when it is gone or unreadable."""
    out = dict.fromkeys(ROLLUP_FIELDS, 0)
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in out:
                    out[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    out["Shared"] = out["Shared_Clean"] + out["Shared_Dirty"]
    return out


class MeasuredMemory:
    """The node's proportional LoRA memory as the OS measures it, for telemetry: the trainer's
    state (its account when first seen, plus the growth of its anonymous pages since, Pss_Anon:
    its tensors, malloc's heap and the base pages its folds made private) and the factor
    slots' allocated shared-memory blocks (factors-*.bin in ``shm_dir``: inference serves
    from them, with no copy). The trainer's account holds the slots too: its part when first
    seen is taken without them, measured here instead. The trainer's runtime (interpreter,
    torch) is not in it: it is in the Pss when the trainer is first seen, which the growth
    starts from."""

    def __init__(self, shm_dir: Path) -> None:
        self.shm_dir = shm_dir
        # (pid, Pss_Anon, the account's bytes less the node's copies)
        self._baseline: tuple[int, int, int] | None = None

    def measure(self, trainer_pid: int | None, account_bytes: int) -> int:
        """Bytes now, given the trainer's pid (None: none runs) and its account's bytes."""
        trainer = 0
        copies = self._slot_bytes()
        rollup = smaps_rollup(trainer_pid) if trainer_pid else None
        if trainer_pid and rollup is not None:
            if self._baseline is None or self._baseline[0] != trainer_pid:
                own = max(0, account_bytes - copies)
                self._baseline = (trainer_pid, rollup["Pss_Anon"], own)
            _, anon0, own0 = self._baseline
            trainer = max(0, own0 + rollup["Pss_Anon"] - anon0)
        return trainer + copies

    def _slot_bytes(self) -> int:
        try:
            return sum(p.stat().st_blocks * 512 for p in self.shm_dir.glob("factors-*.bin"))
        except OSError:  # the node is stopping
            return 0
