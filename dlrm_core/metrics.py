"""Accuracy and latency metrics: exact AUC, log loss, per-time-window metrics, latency percentiles.

Contracts:
- ``auc(labels, scores)`` is the exact ROC AUC (Mann-Whitney U with average ranks for ties, i.e.
  a tied positive/negative pair counts 1/2), equal to scikit-learn's ``roc_auc_score``. When the
  labels hold only one class the AUC is undefined and ``nan`` is returned (never an exception),
  so a window with no clicks shows up as a gap, not a crash.
- ``log_loss`` clips probabilities to ``[eps, 1 - eps]`` so one confident mistake is finite.
- Labels are 0/1 (anything > 0.5 counts as positive); scores are any real numbers for AUC and
  probabilities for log loss. Non-finite scores are rejected with a ValueError.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor | Iterable[float]

LOG_LOSS_EPS = 1e-7


def _as_array(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        arr = x.detach().cpu().to(torch.float64).numpy()
    else:
        arr = np.asarray(x, dtype=np.float64)
    arr = arr.reshape(-1)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def _pair(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    y = _as_array(labels, "labels") > 0.5
    s = _as_array(scores, "scores")
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    return y, s


def _average_ranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks of ``s`` with ties given the mean of the ranks they span (the order of
    tied values within their run does not matter, so the faster unstable sort serves)."""
    order = np.argsort(s)
    sorted_s = s[order]
    # Start index of each run of equal values, in sorted order.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.shape[0]]
    mean_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(s.shape[0], dtype=np.float64)
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


def auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Exact ROC AUC; ``nan`` when only one class is present (or the input is empty)."""
    y, s = _pair(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.shape[0] - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(_average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def log_loss(labels: ArrayLike, probs: ArrayLike, eps: float = LOG_LOSS_EPS) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1-eps]; nan when empty."""
    if not 0.0 < eps < 0.5:
        raise ValueError(f"eps must be in (0, 0.5), got {eps}")
    y, p = _pair(labels, probs)
    if y.shape[0] == 0:
        return math.nan
    if (p < 0).any() or (p > 1).any():
        raise ValueError("log_loss needs probabilities in [0, 1]")
    p = np.clip(p, eps, 1.0 - eps)
    return float(-np.mean(np.where(y, np.log(p), np.log1p(-p))))


@dataclass(frozen=True)
class WindowResult:
    start: float  # window start time, seconds (inclusive)
    end: float  # window end time, seconds (exclusive)
    count: int
    positives: int
    auc: float  # nan when the window has a single class
    log_loss: float


class WindowedMetrics:
    """Streaming accumulator of (label, score, timestamp): AUC / log loss per fixed time window.

    Window k covers ``[origin + k*width, origin + (k+1)*width)``. Samples are kept per window
    (exact AUC needs them); ``max_windows`` bounds memory by dropping the oldest windows, whose
    results are frozen into ``results()`` first so nothing reported is lost.
    """

    def __init__(self, width_s: float, origin: float = 0.0, max_windows: int = 10_000) -> None:
        if not (width_s > 0 and math.isfinite(width_s)):
            raise ValueError(f"width_s must be a positive finite number, got {width_s}")
        if max_windows < 1:
            raise ValueError(f"max_windows must be >= 1, got {max_windows}")
        self.width_s = float(width_s)
        self.origin = float(origin)
        self.max_windows = max_windows
        self._labels: dict[int, list[np.ndarray]] = {}
        self._scores: dict[int, list[np.ndarray]] = {}
        self._frozen: dict[int, WindowResult] = {}

    def add(self, labels: ArrayLike, scores: ArrayLike, timestamps: ArrayLike) -> None:
        y, s = _pair(labels, scores)
        t = _as_array(timestamps, "timestamps")
        if t.shape != y.shape:
            raise ValueError("timestamps must have one entry per label")
        if (s < 0).any() or (s > 1).any():
            raise ValueError("WindowedMetrics needs probability scores in [0, 1]")
        win = np.floor((t - self.origin) / self.width_s).astype(np.int64)
        for k in np.unique(win).tolist():
            if k in self._frozen:
                raise ValueError(f"window {k} was already evicted; samples arrived too late")
            mask = win == k
            self._labels.setdefault(k, []).append(y[mask])
            self._scores.setdefault(k, []).append(s[mask])
        while len(self._labels) > self.max_windows:
            oldest = min(self._labels)
            self._frozen[oldest] = self._compute(oldest)
            del self._labels[oldest], self._scores[oldest]

    def _compute(self, k: int) -> WindowResult:
        y = np.concatenate(self._labels[k])
        s = np.concatenate(self._scores[k])
        start = self.origin + k * self.width_s
        return WindowResult(
            start=start,
            end=start + self.width_s,
            count=int(y.shape[0]),
            positives=int(y.sum()),
            auc=auc(y, s),
            log_loss=log_loss(y, s),
        )

    def results(self) -> list[WindowResult]:
        """One result per window that received samples, ordered by time."""
        out = dict(self._frozen)
        for k in self._labels:
            out[k] = self._compute(k)
        return [out[k] for k in sorted(out)]


class LatencyHistogram:
    """Latency percentiles in bounded memory: log-spaced buckets, mergeable.

    Values (milliseconds) fall into buckets whose bounds grow by ``growth`` each; a percentile is
    reported as the geometric midpoint of its bucket, so its relative error is at most
    ``sqrt(growth) - 1`` (about 1% for the default growth 1.02) for values in
    ``[min_ms, max_ms]``; values below ``min_ms`` are reported as ``min_ms`` and above
    ``max_ms`` as ``max_ms`` (the true max is tracked exactly). Memory is one int64 per bucket
    (about 1,000 buckets for the defaults) whatever the number of samples.
    Percentiles use the nearest-rank definition: the smallest value with at least q% of samples
    at or below it.
    """

    def __init__(self, min_ms: float = 1e-3, max_ms: float = 1e5, growth: float = 1.02) -> None:
        if not (0 < min_ms < max_ms and math.isfinite(max_ms)):
            raise ValueError(f"need 0 < min_ms < max_ms < inf, got {min_ms}, {max_ms}")
        if not 1.0 < growth <= 2.0:
            raise ValueError(f"growth must be in (1, 2], got {growth}")
        self.min_ms, self.max_ms, self.growth = float(min_ms), float(max_ms), float(growth)
        self._log_growth = math.log(growth)
        n = int(math.ceil(math.log(max_ms / min_ms) / self._log_growth)) + 1
        self._counts = np.zeros(n + 1, dtype=np.int64)  # bucket 0: below min_ms
        self.count = 0
        self.total_ms = 0.0
        self.max_seen = -math.inf

    @property
    def relative_error(self) -> float:
        return math.sqrt(self.growth) - 1.0

    def _bucket(self, ms: np.ndarray) -> np.ndarray:
        idx = np.zeros(ms.shape, dtype=np.int64)
        above = ms >= self.min_ms
        idx[above] = 1 + np.floor(np.log(ms[above] / self.min_ms) / self._log_growth).astype(
            np.int64
        )
        return np.minimum(idx, self._counts.shape[0] - 1)

    def record(self, ms: float | ArrayLike) -> None:
        arr = _as_array([ms] if isinstance(ms, int | float) else ms, "latency")
        if (arr < 0).any():
            raise ValueError("latencies must be >= 0 ms")
        if arr.shape[0] == 0:
            return
        np.add.at(self._counts, self._bucket(arr), 1)
        self.count += int(arr.shape[0])
        self.total_ms += float(arr.sum())
        self.max_seen = max(self.max_seen, float(arr.max()))

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Adds ``other``'s samples into this histogram (same bucket layout required)."""
        if (other.min_ms, other.max_ms, other.growth) != (self.min_ms, self.max_ms, self.growth):
            raise ValueError("can only merge histograms with the same min_ms, max_ms and growth")
        self._counts += other._counts
        self.count += other.count
        self.total_ms += other.total_ms
        self.max_seen = max(self.max_seen, other.max_seen)
        return self

    def percentile(self, q: float) -> float:
        """The q-th percentile (0 < q <= 100) in ms; nan when empty."""
        if not 0.0 < q <= 100.0:
            raise ValueError(f"q must be in (0, 100], got {q}")
        if self.count == 0:
            return math.nan
        rank = math.ceil(q / 100.0 * self.count)
        k = int(np.searchsorted(np.cumsum(self._counts), rank))
        if k == 0:
            return self.min_ms
        lo = self.min_ms * self.growth ** (k - 1)
        value = min(lo * math.sqrt(self.growth), self.max_ms)
        return min(value, self.max_seen)

    @property
    def mean_ms(self) -> float:
        return self.total_ms / self.count if self.count else math.nan

    def summary(self) -> dict[str, float]:
        return {
            "count": float(self.count),
            "mean_ms": self.mean_ms,
            "p50_ms": self.percentile(50),
            "p95_ms": self.percentile(95),
            "p99_ms": self.percentile(99),
            "max_ms": self.max_seen if self.count else math.nan,
        }
