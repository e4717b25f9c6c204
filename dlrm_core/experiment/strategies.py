"""Update strategies behind one interface: how the model a node serves gets fresher.

The harness drives every strategy the same way, in clock order:
``advance(now)`` (syncs fall due, payloads land), ``score(batch)`` (serve, before any learning
from that batch), ``on_ready(batch, now)`` (a batch's labels became usable: only local learners
use it). Sync strategies also listen to every cluster step (to track changed rows).

Accounting, per strategy:
- ``bytes_moved``: bytes that crossed the cluster -> node link (experiment scale; the projected
  bytes use the link scale);
- ``cpu_seconds``: process time spent in the strategy's own update work: on the cluster's side
  (``cluster_cpu_seconds``: tracking changed rows, snapshotting) and on the node
  (``node_cpu_seconds``: applying; for LiveUpdate, local training). The cluster's training time
  is accounted once, on the cluster, and shared by the sync strategies;
- memory overhead: extra bytes the node holds for updating, against the bytes of its tables,
  twice: as the strategy's own formula says (``memory_overhead_bytes``, what a budget caps) and
  as measured (``measured_bytes``: the distinct tensor storages it holds, see memory.py); a
  payload lands in pieces (``Payload.pieces``), so a node holds one piece of it at a time;
- staleness: the serving time minus the time of the newest event the served model learnt from.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import (
    ChangedRows,
    Link,
    Payload,
    SimulatedCluster,
    table_bytes,
)
from dlrm_core.experiment.memory import held_tensor_bytes
from dlrm_core.model import DLRM
from dlrm_core.trainer import FullStepResult


@dataclass
class Accounting:
    table_bytes: int  # bytes of the node's embedding tables (the memory baseline)
    bytes_moved: int = 0
    bytes_projected: float = 0.0
    cluster_cpu_seconds: float = 0.0
    node_cpu_seconds: float = 0.0
    memory_overhead_bytes: int = 0  # now
    peak_memory_overhead_bytes: int = 0
    window_peak_bytes: int = 0  # peak since the harness last took it (per-window series)
    syncs_sent: int = 0
    syncs_landed: int = 0
    syncs_skipped_link_busy: int = 0
    transfer_seconds: list[float] = field(default_factory=list)
    measured_bytes: int = 0  # now
    peak_measured_bytes: int = 0

    @property
    def cpu_seconds(self) -> float:
        return self.cluster_cpu_seconds + self.node_cpu_seconds

    def set_measured(self, held: int) -> None:
        self.measured_bytes = held
        self.peak_measured_bytes = max(self.peak_measured_bytes, held)

    def set_memory(self, overhead: int) -> None:
        self.memory_overhead_bytes = overhead
        self.peak_memory_overhead_bytes = max(self.peak_memory_overhead_bytes, overhead)
        self.window_peak_bytes = max(self.window_peak_bytes, overhead)

    def take_window_peak(self) -> int:
        """Peak overhead bytes since the last call (then restart from the current value)."""
        peak = max(self.window_peak_bytes, self.memory_overhead_bytes)
        self.window_peak_bytes = self.memory_overhead_bytes
        return peak

    @property
    def memory_overhead_pct(self) -> float:
        return 100.0 * self.memory_overhead_bytes / self.table_bytes

    @property
    def peak_memory_overhead_pct(self) -> float:
        return 100.0 * self.peak_memory_overhead_bytes / self.table_bytes


class Strategy:
    """A node's served model and how it is updated (the base serves it unchanged)."""

    name = ""

    def __init__(self, model: DLRM, newest_event_s: float, learnt_until_id: int) -> None:
        self.model = model
        self.model.eval()
        self.newest_event_s = newest_event_s  # newest event reflected in the served model
        self.learnt_until_id = learnt_until_id  # largest request id it has learnt from
        self.accounting = Accounting(table_bytes=table_bytes(model))

    @torch.no_grad()
    def score(self, batch: SparseBatch) -> torch.Tensor:
        """(B,) click probabilities of the served model."""
        return torch.sigmoid(self.model(batch))

    def advance(self, now: float) -> None:
        """Let clock time ``now`` arrive: periodic work falls due, transfers land."""

    def on_ready(self, batch: SparseBatch, now: float) -> None:
        """``batch`` (labelled) became usable as training data at ``now``."""

    def ranks(self) -> dict[str, int]:
        """Rank per low-rank table (empty for strategies without factors)."""
        return {}


class Stale(Strategy):
    """Serves the base model forever."""

    name = "stale"


class Oracle(Strategy):
    """Serves the cluster's own live model (same label delay, no transfer): the freshness
    ceiling of every strategy fed by the cluster. Its node holds nothing extra."""

    name = "oracle"

    def __init__(self, cluster: SimulatedCluster) -> None:
        super().__init__(cluster.model, cluster.newest_event_s, cluster.learnt_until_id)
        self.cluster = cluster

    @torch.no_grad()
    def score(self, batch: SparseBatch) -> torch.Tensor:
        return torch.sigmoid(self.cluster.model(batch))

    def advance(self, now: float) -> None:
        self.newest_event_s = self.cluster.newest_event_s
        self.learnt_until_id = self.cluster.learnt_until_id


class SyncStrategy(Strategy):
    """Every ``period`` s, snapshot part of the cluster and send it; serve it when it lands."""

    def __init__(
        self,
        model: DLRM,
        cluster: SimulatedCluster,
        link: Link,
        period_s: float,
        start_s: float,
    ) -> None:
        super().__init__(model, cluster.newest_event_s, cluster.learnt_until_id)
        self.cluster = cluster
        self.link = link
        self.period_s = period_s
        self.next_sync_s = start_s + period_s
        self.in_flight: deque[tuple[float, Payload]] = deque()
        cluster.listeners.append(self._timed_observe)

    def _timed_observe(self, result: FullStepResult, now: float) -> None:
        start = time.process_time()
        self.observe(result, now)
        self.accounting.cluster_cpu_seconds += time.process_time() - start

    def observe(self, result: FullStepResult, now: float) -> None:
        """Track the rows a cluster step changed (nothing to track by default)."""

    def select(self, now: float) -> dict[str, torch.Tensor | None] | None:
        """Rows to send per table (None: the whole model)."""
        return None

    def advance(self, now: float) -> None:
        self._land(now)
        while self.next_sync_s <= now:
            due = self.next_sync_s
            self.next_sync_s += self.period_s
            self._land(due)
            if self.link.busy(due):
                self.accounting.syncs_skipped_link_busy += 1  # its changes ride with the next
                continue
            start = time.process_time()
            payload = self.cluster.snapshot(due, self.select(due))
            self.accounting.cluster_cpu_seconds += time.process_time() - start
            lands = self.link.send(payload, due)
            acc = self.accounting
            acc.bytes_moved += payload.bytes
            acc.bytes_projected += payload.table_bytes * self.link.scale + payload.dense_bytes
            acc.syncs_sent += 1
            acc.transfer_seconds.append(lands - due)
            self.in_flight.append((lands, payload))
        self._land(now)

    def _land(self, now: float) -> None:
        while self.in_flight and self.in_flight[0][0] <= now:
            _, payload = self.in_flight.popleft()
            staged = 0
            for piece in payload.pieces():  # what the node holds while it lands: one piece
                start = time.process_time()
                piece.apply_to(self.model)
                self.accounting.node_cpu_seconds += time.process_time() - start
                self.accounting.set_memory(piece.table_bytes)
                if piece.bytes > staged:  # the largest piece is the most the node holds
                    staged = piece.bytes
                    self.accounting.set_measured(held_tensor_bytes(piece, set()))
            self.accounting.set_memory(0)
            self.accounting.set_measured(0)
            self.accounting.syncs_landed += 1
            self.newest_event_s = max(self.newest_event_s, payload.newest_event_s)
            self.learnt_until_id = max(self.learnt_until_id, payload.learnt_until_id)


class FullSync(SyncStrategy):
    """Every period, the whole tables and MLPs."""

    name = "full_sync"


class DeltaSync(SyncStrategy):
    """Every period, the rows the cluster changed since the last sync (and the MLPs)."""

    name = "delta_sync"

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.changed = ChangedRows(self.cluster.model.config)

    def observe(self, result: FullStepResult, now: float) -> None:
        self.changed.mark(result)

    def select(self, now: float) -> dict[str, torch.Tensor | None] | None:
        return self.changed.take()


class PrioritizedDelta(SyncStrategy):
    """Every period, the top ``top_p_pct`` % of the changed rows by priority; the rest wait.

    Priority "magnitude": the L2 norm of the row's gradients summed since it was last sent.
    "freshness_magnitude" (Ekko-style): that magnitude / (1 + (now - last change) / period),
    so recently changed rows go first among rows of equal magnitude.
    """

    name = "prioritized_delta"

    def __init__(
        self,
        model: DLRM,
        cluster: SimulatedCluster,
        link: Link,
        period_s: float,
        start_s: float,
        top_p_pct: float,
        priority: str,
    ) -> None:
        super().__init__(model, cluster, link, period_s, start_s)
        self.top_p = top_p_pct / 100.0
        self.priority = priority
        cfg = cluster.model.config
        sizes = dict(zip(cfg.feature_names, cfg.table_sizes, strict=True))
        self.magnitude = {name: torch.zeros(n) for name, n in sizes.items()}
        self.changed_at = {name: torch.zeros(n, dtype=torch.float64) for name, n in sizes.items()}

    def observe(self, result: FullStepResult, now: float) -> None:
        for name, (ids, norms) in result.touched.items():
            self.magnitude[name].index_add_(0, ids, norms)
            self.changed_at[name][ids] = now

    def select(self, now: float) -> dict[str, torch.Tensor | None] | None:
        pending = {name: torch.nonzero(m > 0).squeeze(1) for name, m in self.magnitude.items()}
        total = sum(int(ids.numel()) for ids in pending.values())
        k = math.ceil(self.top_p * total)
        if total == 0:
            return {name: ids for name, ids in pending.items()}
        # one global ranking across tables: the budget goes to the most important rows
        prio = torch.cat([self._priority(name, ids, now) for name, ids in pending.items()])
        owner = torch.cat([torch.full((ids.numel(),), i) for i, ids in enumerate(pending.values())])
        flat = torch.cat(list(pending.values()))
        top = torch.topk(prio, k, sorted=False).indices
        out: dict[str, torch.Tensor | None] = {}
        for i, name in enumerate(pending):
            ids = torch.sort(flat[top[owner[top] == i]]).values
            self.magnitude[name][ids] = 0.0
            out[name] = ids
        return out

    def _priority(self, name: str, ids: torch.Tensor, now: float) -> torch.Tensor:
        mag = self.magnitude[name][ids].to(torch.float64)
        if self.priority == "magnitude":
            return mag
        age = now - self.changed_at[name][ids]
        return mag / (1.0 + age / self.period_s)
