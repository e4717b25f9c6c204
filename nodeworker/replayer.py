"""A built-in traffic replayer for demos and benchmarks: requests from a stream (a dataset file
through a dlrm_core reader, or the synthetic stream) arrive open-loop at a target QPS with
Poisson inter-arrival times; each request's logged label is sent as feedback after a delay.

Latency is measured from the scheduled arrival, so time spent queueing behind a slow request
counts, as it would for a client (no coordinated omission).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_core.batch import SparseBatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReplayConfig:
    qps: float = 100.0
    label_delay_s: float = 1.0  # from serving to the label's arrival
    rows_per_request: int = 1  # candidates scored per request
    workers: int = 4  # concurrent requests in flight
    seed: int = 0
    feedback: str = "all"  # "all": every label arrives; "positives": negatives time out
    max_backlog: int = 10_000  # arrivals waiting for a worker before they are shed

    def __post_init__(self) -> None:
        if not 0 < self.qps <= 1e6 or self.label_delay_s < 0 or self.rows_per_request < 1:
            raise ValueError("need 0 < qps <= 1e6, label_delay_s >= 0, rows_per_request >= 1")
        if not 1 <= self.workers <= 256 or self.feedback not in ("all", "positives"):
            raise ValueError("workers must be in [1, 256], feedback 'all' or 'positives'")


@dataclass
class ReplayStats:
    sent: int = 0
    served: int = 0
    shed: int = 0  # arrivals dropped because the backlog was full
    errors: int = 0
    unserved: int = 0  # arrivals still waiting for a worker when the replay stopped (dropped)
    feedback: int = 0
    exhausted: bool = False


def slice_rows(batch: SparseBatch, start: int, stop: int) -> SparseBatch:
    """Rows [start, stop) as views (contiguous bags need no per-row work)."""
    values, offsets = [], []
    for vals, offs in zip(batch.values, batch.offsets, strict=True):
        low = int(offs[start])
        high = int(offs[stop]) if stop < len(batch) else int(vals.shape[0])
        values.append(vals[low:high])
        offsets.append(offs[start:stop] - low)
    return SparseBatch(
        batch.keys,
        tuple(values),
        tuple(offsets),
        batch.dense[start:stop],
        batch.labels[start:stop],
        batch.timestamps[start:stop],
        batch.request_ids[start:stop],
    )


def skip_events(source: Iterable[SparseBatch], count: int) -> Iterator[SparseBatch]:
    """The stream without its first ``count`` events (those a base checkpoint was pretrained
    on: serving them again would score the model on its own training data)."""
    if count < 0:
        raise ValueError(f"the events to skip must be >= 0, got {count}")
    for batch in source:
        if count >= len(batch):
            count -= len(batch)
            continue
        yield slice_rows(batch, count, len(batch)) if count else batch
        count = 0


def requests_of(source: Iterable[SparseBatch], rows: int) -> Iterator[SparseBatch]:
    """The stream cut into requests of ``rows`` consecutive events."""
    for batch in source:
        for start in range(0, len(batch), rows):
            yield slice_rows(batch, start, min(start + rows, len(batch)))


class Replayer:
    def __init__(
        self,
        predict: Callable[..., tuple[torch.Tensor, torch.Tensor, int]],
        feedback: Callable[[int, float], object],
        source: Iterable[SparseBatch],
        config: ReplayConfig | None = None,
    ):
        self.predict = predict
        self.feedback_fn = feedback
        self.config = config or ReplayConfig()
        self.requests = requests_of(source, self.config.rows_per_request)
        self.stats = ReplayStats()
        self._work: queue.Queue = queue.Queue(self.config.max_backlog)
        self._labels: list[tuple[float, int, int, float]] = []
        self._label_lock = threading.Condition()
        self._tie = itertools.count()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _dispatch(self) -> None:
        rng = np.random.default_rng(self.config.seed)
        next_at = time.perf_counter()
        for request in self.requests:
            next_at += rng.exponential(1.0 / self.config.qps)
            delay = next_at - time.perf_counter()
            if delay > 0 and self._stop.wait(delay):
                return
            if self._stop.is_set():
                return
            try:
                self._work.put_nowait((next_at, request))
                self.stats.sent += 1
            except queue.Full:
                self.stats.shed += 1
        self.stats.exhausted = True

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                arrived, request = self._work.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                _, ids, _ = self.predict(request, arrived_at=arrived)
            except Exception:
                if not self.stats.errors:
                    log.exception("replayed request failed")
                self.stats.errors += 1
                continue
            self.stats.served += 1
            due = time.time() + self.config.label_delay_s
            with self._label_lock:
                for rid, label in zip(ids.tolist(), request.labels.tolist(), strict=True):
                    if label > 0 or self.config.feedback == "all":
                        heapq.heappush(self._labels, (due, next(self._tie), rid, label))
                self._label_lock.notify()

    def _deliver(self) -> None:
        while not self._stop.is_set():
            with self._label_lock:
                if not self._labels:
                    self._label_lock.wait(0.1)
                    continue
                wait = self._labels[0][0] - time.time()
                if wait > 0:
                    self._label_lock.wait(min(wait, 0.1))
                    continue
                _, _, rid, label = heapq.heappop(self._labels)
            self.feedback_fn(rid, label)
            self.stats.feedback += 1

    def start(self) -> Replayer:
        targets = [self._dispatch, self._deliver] + [self._serve] * self.config.workers
        for i, target in enumerate(targets):
            name = f"replay{target.__name__}-{i}"  # replay_serve-2: its cpu shows per role
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        with self._label_lock:
            self._label_lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)
        # Dropped, not kept: the load generator lives in the node's inference process, and the
        # arrivals a slow node left waiting (~2,000 requests' tensors, +1.9 MiB by tracemalloc
        # at load 10) read as the node's memory when a bench measured it after the replay.
        while True:
            try:
                self._work.get_nowait()
            except queue.Empty:
                break
            self.stats.unserved += 1
