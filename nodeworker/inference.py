"""The request path: one DLRM forward over the base tables plus the low-rank correction of the
factor version being served, under the inference lock; each served request goes to the feed
(nodeworker.feed) for the join. The version installer swaps versions between two batches by
taking the same lock (``exclusive``)."""

from __future__ import annotations

import threading
import time

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.malloc_policy import bound_native_heap
from dlrm_core.model import DLRM
from dlrm_core.serving import ServingDelta
from nodeworker.feed import FeedWriter
from nodeworker.qos import QosController
from nodeworker.runtime_metrics import RuntimeMetrics


class InferencePath:
    def __init__(
        self, model: DLRM, feed: FeedWriter, qos: QosController, metrics: RuntimeMetrics
    ) -> None:
        bound_native_heap()  # the process serving it runs for days: keep its native heap flat
        self.model = model
        self.feed = feed
        self.qos = qos
        self.metrics = metrics
        self.delta: ServingDelta | None = None  # the factor version being served
        self.version = 0  # its number (0: the bare base)
        self.exclusive = threading.Lock()  # held for a batch; a swap or base write waits for it
        self._next_id = 0  # request ids, handed out under the lock
        self._inflight = 0
        self._inflight_lock = threading.Lock()

    def predict(
        self, batch: SparseBatch, arrived_at: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(scores (B,), request ids (B,), factor version served). ``arrived_at`` is a
        time.perf_counter() value when the request was queued before this call."""
        start = time.perf_counter() if arrived_at is None else arrived_at
        with self._inflight_lock:
            self._inflight += 1
            self.qos.observe_queue_depth(self._inflight - 1)
        try:
            with self.exclusive:
                locked_at = time.perf_counter()
                n = len(batch)
                first = self._next_id
                self._next_id += n
                ids = torch.arange(first, first + n, dtype=torch.int64)
                with torch.no_grad():
                    scores = torch.sigmoid(self.model(batch, delta=self.delta))
                version = self.version
                self.feed.serve(batch, scores, first, time.time())  # in id order
                service_ms = (time.perf_counter() - locked_at) * 1000.0
        finally:
            with self._inflight_lock:
                self._inflight -= 1
        latency_ms = (time.perf_counter() - start) * 1000.0
        now = time.time()
        self.qos.observe(latency_ms, now)
        self.metrics.served(latency_ms, service_ms, now)
        return scores, ids, version

    def serve(self, delta: ServingDelta | None, version: int) -> None:
        """Serve ``delta`` (None: the bare base) from the next batch on; hold ``exclusive``."""
        self.delta = delta
        self.version = version

    def served(self) -> tuple[ServingDelta | None, int]:
        """The version being served and its number, read together."""
        with self.exclusive:
            return self.delta, self.version
