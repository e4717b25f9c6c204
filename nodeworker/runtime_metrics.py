"""What the runtime measures for telemetry and benchmarks: request latency and QPS, windowed
AUC / log loss of served scores against joined labels, trainer throughput, and the freshness lag
(label arrival until inference serves a factor version trained on it)."""

from __future__ import annotations

import bisect
import math
import threading
from collections import deque
from typing import Any

import numpy as np

from dlrm_core.metrics import auc, log_loss
from nodeworker.qos import LatencyWindow


class RuntimeMetrics:
    def __init__(self, quality_window_s: float = 60.0, max_rows: int = 50_000):
        self.latency = LatencyWindow(window_s=1.0)
        self.all_latencies: deque[float] = deque(maxlen=1_000_000)  # for benchmarks
        self.quality_window_s = quality_window_s
        self._quality: deque[tuple[float, float, float]] = deque(maxlen=max_rows)
        self._installs: list[tuple[int, float]] = []  # (version, time), ascending
        self._fresh_pending: list[tuple[int, list[float]]] = []
        self._lags: deque[tuple[float, float]] = deque(maxlen=100_000)  # (time, lag s)
        self._samples = (0.0, 0)  # (time, trainer samples) of the last stats
        self.trainer_rate = 0.0
        self.skipped = 0
        self.dropped = 0  # joined rows dropped before the trainer took them
        self.to_trainer = 0  # joined rows handed to the trainer
        self.trained_samples = 0
        self._lock = threading.Lock()

    def served(self, latency_ms: float, now: float) -> None:
        self.latency.add(latency_ms, now)
        self.all_latencies.append(latency_ms)

    def joined(self, labels: np.ndarray, scores: np.ndarray, now: float) -> None:
        with self._lock:
            for label, score in zip(labels.tolist(), scores.tolist(), strict=True):
                if math.isfinite(score):
                    self._quality.append((now, label, score))

    def installed(self, version: int, now: float) -> None:
        with self._lock:
            self._installs.append((version, now))
            del self._installs[:-1000]
            self._resolve()

    def trained(self, stats: dict[str, Any], now: float) -> None:
        with self._lock:
            t0, s0 = self._samples
            if t0 and now > t0:
                self.trainer_rate = max(0.0, (stats["samples"] - s0) / (now - t0))
            self._samples = (now, stats["samples"])
            self.trained_samples = stats["samples"]
            self.skipped = stats["skipped"]
            self._fresh_pending.extend(stats["fresh"])
            self._resolve()

    def _resolve(self) -> None:
        versions = [v for v, _ in self._installs]
        waiting = []
        for version, times in self._fresh_pending:
            i = bisect.bisect_left(versions, version)
            if i == len(versions):
                waiting.append((version, times))
                continue
            served_at = self._installs[i][1]
            self._lags.extend((served_at, max(0.0, served_at - t)) for t in times)
        self._fresh_pending = waiting[-1000:]

    def lags(self, since: float = 0.0) -> list[float]:
        with self._lock:
            return [lag for t, lag in self._lags if t >= since]

    def window(self, now: float) -> dict[str, Any]:
        """The telemetry metrics of the last second (quality over quality_window_s)."""
        qps = self.latency.count(now)
        p50, p95, p99 = self.latency.quantiles(now, (0.5, 0.95, 0.99))
        with self._lock:
            cutoff = now - self.quality_window_s
            rows = [(y, p) for t, y, p in self._quality if t >= cutoff]
        labels = np.array([y for y, _ in rows])
        scores = np.array([p for _, p in rows])
        both_classes = rows and 0 < labels.sum() < len(labels)
        recent = self.lags(now - 5.0)
        return {
            "qps": float(qps),
            "p50_ms": p50,
            "p95_ms": p95,
            "p99_ms": p99,
            "auc": float(auc(labels, scores)) if both_classes else None,
            "logloss": float(log_loss(labels, scores)) if rows else None,
            "freshness_lag_s": float(np.median(recent)) if recent else None,
            "trainer_samples_per_s": self.trainer_rate,
        }
