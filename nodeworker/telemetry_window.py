"""The node's last second for the telemetry reporter (nodeworker.telemetry.NodeSnapshot):
the request path's metrics, the trainer's last stats, the events waiting and the drops since
the previous window."""

from __future__ import annotations

import time
from collections.abc import Callable

from dlrm_core.model import DLRM, base_weight
from nodeworker.node_events import NodeEvents
from nodeworker.node_state import NodeState
from nodeworker.protocol.telemetry import BYTES_HIGH, PCT_HIGH
from nodeworker.qos import QosController
from nodeworker.runtime_metrics import MeasuredMemory, RuntimeMetrics
from nodeworker.telemetry import CpuSampler, NodeSnapshot
from nodeworker.trainer_client import TrainerClient

# the join's counts of rows that never reached training
DROP_COUNTS = ("dropped_pending", "dropped_ready", "dropped_backlog", "ring_dropped_rows", "lost")


class TelemetryWindow:
    def __init__(
        self,
        model: DLRM,
        metrics: RuntimeMetrics,
        events: NodeEvents,
        trainer: TrainerClient,
        qos: QosController,
        state: NodeState,
        feed_counts: Callable[[], dict[str, int]],
        memory: MeasuredMemory,
    ) -> None:
        self.model = model
        self.metrics = metrics
        self.events = events
        self.trainer = trainer
        self.qos = qos
        self.state = state
        self.feed_counts = feed_counts
        self.memory = memory  # the node's memory fields: measured (tables: their account)
        self.cpu = CpuSampler()
        self._reported = (0, 0)  # (dropped, skipped) already in telemetry

    def take(self) -> NodeSnapshot:
        now = time.time()
        tables, total_over, total_base = self._tables()
        counts = self.feed_counts()
        dropped = sum(counts.get(key, 0) for key in DROP_COUNTS)
        skipped = self.metrics.skipped
        last_dropped, last_skipped = self._reported
        self._reported = (dropped, skipped)
        state = self.qos.last.state if self.qos.last else "running"
        if self.state.mode_paused or not self.trainer.running:
            state = "paused"
        pid = self.trainer.pid if self.trainer.running else None
        measured = min(float(self.memory.measure(pid, total_over)), BYTES_HIGH)
        return NodeSnapshot(
            **self.metrics.window(now),
            memory_overhead_bytes=measured,
            memory_overhead_pct=min(100.0 * measured / total_base, PCT_HIGH),
            trainer_duty=self.trainer.duty,
            throttle=state,
            skipped_batches=skipped - last_skipped,
            dropped_samples=dropped - last_dropped,
            tables=tables,
            cpu_per_core=self.cpu.sample(),
            events=self.events.drain(),
        )

    def _tables(self) -> tuple[dict[str, dict[str, float]], int, int]:
        """Each table's rank and memory overhead, and the overhead and base bytes in all."""
        stats = self.trainer.last_stats
        memory = stats.memory if stats else {}
        ranks = stats.ranks if stats else {}
        tables, total_over, total_base = {}, 0, 0
        for name in self.model.config.feature_names:
            weight = base_weight(self.model, name)
            base_b = weight.numel() * weight.element_size()
            over = memory.get(name, (0, base_b))[0]
            tables[name] = {
                "rank": int(ranks.get(name, 0)),
                "memory_bytes": float(over),
                "memory_pct": 100.0 * over / base_b,
            }
            total_over += over
            total_base += base_b
        join = stats.feed.join_bytes if stats else 0  # the label join, beside the budget's cap
        return tables, total_over + join, total_base
