"""A fleet of N inference nodes: routing, nodes that learn only their share, fleet accounting.

Routing sends each event to one node: ``sticky-user`` hashes the event's first id of the route
feature (a user id), so a user always meets the same node; ``random`` hashes the request id
with the seed (stateless, so every replay of the stream routes identically).

A strategy whose node learns locally (LiveUpdate and its variants) runs as a ``LocalFleet``: N
independent nodes, each scoring and learning only the events routed to it. A strategy fed by
the cluster alone (stale, the syncs, oracle) serves the same model on every node, so one node is
simulated and its node-side costs count N times; the cluster's side (training, snapshots,
dirty-row tracking) counts once. A sync costs one transfer per node, or one in all with
multicast.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.fleet_config import FleetConfig
from dlrm_core.experiment.memo import Memo
from dlrm_core.experiment.strategies import Accounting, Strategy
from dlrm_core.schema import StreamSchema

_MIX = 0x9E3779B97F4A7C15  # 2^64 / golden ratio: spreads consecutive ids over the nodes
_MASK = (1 << 61) - 1


class Router:
    """Event -> node index in [0, nodes)."""

    # splits remembered: enough for a batch's labels to fall due (the label delay is a few
    # batches) while the fleets of a replay split every batch
    RECENT = 16

    def __init__(self, config: FleetConfig, schema: StreamSchema, seed: int) -> None:
        self.nodes = config.nodes
        self.routing = config.routing
        self.seed = seed
        self.feature = None
        if config.routing == "sticky-user":
            self.feature = config.route_feature or next(
                (k for k in schema.keys if "user" in k.lower()), schema.keys[0]
            )
            if self.feature not in schema.keys:
                raise ValueError(f"route feature {self.feature!r} is not one of {schema.keys}")
        self._recent: deque[tuple[SparseBatch, list[tuple[int, torch.Tensor, SparseBatch]]]]
        self._recent = deque(maxlen=self.RECENT)

    def route(self, batch: SparseBatch) -> torch.Tensor:
        """(B,) int64 node of each event."""
        if self.nodes == 1:
            return torch.zeros(len(batch), dtype=torch.int64)
        if self.feature is None:
            key = batch.request_ids + self.seed * 1_000_003
        else:
            i = batch.keys.index(self.feature)
            values, offsets = batch.values[i], batch.offsets[i]
            has = batch.lengths(i) > 0
            first = (
                values[offsets.clamp(max=max(values.numel() - 1, 0))] if values.numel() else None
            )
            key = (
                torch.where(has, first, -1)
                if first is not None
                else torch.full_like(has, -1, dtype=torch.int64)
            )
        return ((key * _MIX) & _MASK) % self.nodes

    def split(self, batch: SparseBatch) -> list[tuple[int, torch.Tensor]]:
        """[(node, positions in the batch)] for every node that got events."""
        nodes = self.route(batch)
        out = []
        for node in torch.unique(nodes).tolist():
            out.append((int(node), torch.nonzero(nodes == node).squeeze(1)))
        return out

    def parts(self, batch: SparseBatch) -> list[tuple[int, torch.Tensor, SparseBatch]]:
        """[(node, positions, the sub-batch at them)] for every node that got events; the
        last ``RECENT`` batches' are remembered (by identity: batches are never modified)."""
        for seen, parts in self._recent:
            if seen is batch:
                return parts
        parts = [(node, pos, batch.select(pos)) for node, pos in self.split(batch)]
        self._recent.append((batch, parts))
        return parts


ROUTERS: Memo[Router] = Memo(8)


def shared_router(config: FleetConfig, schema: StreamSchema, seed: int) -> Router:
    """The process's router of this shape (routing is a pure function of the shape, the
    schema's keys and the seed, so sharing one only shares its remembered splits)."""
    key = (config.nodes, config.routing, config.route_feature, schema.keys, seed)
    return ROUTERS.get(key, lambda: Router(config, schema, seed))


class LocalFleet(Strategy):
    """N nodes of one locally learning strategy; each serves and learns its routed share."""

    def __init__(self, nodes: Sequence[Strategy], router: Router, multicast: bool) -> None:
        first = nodes[0]
        self.name = first.name
        self.nodes = list(nodes)
        self.router = router
        self.multicast = multicast
        self.model = first.model
        self.newest_event_s = min(n.newest_event_s for n in nodes)
        self.learnt_until_id = max(n.learnt_until_id for n in nodes)
        self.accounting = Accounting(table_bytes=first.accounting.table_bytes)

    def score(self, batch: SparseBatch) -> torch.Tensor:
        if len(self.nodes) == 1:
            return self.nodes[0].score(batch)
        out = torch.empty(len(batch))
        for node, pos, part in self.router.parts(batch):
            out[pos] = self.nodes[node].score(part)
        return out

    def advance(self, now: float) -> None:
        for node in self.nodes:
            node.advance(now)
        self._sum()

    def on_ready(self, batch: SparseBatch, now: float) -> None:
        if len(self.nodes) == 1:
            self.nodes[0].on_ready(batch, now)
        else:
            for node, _, part in self.router.parts(batch):
                self.nodes[node].on_ready(part, now)
        self._sum()

    def ranks(self) -> dict[str, int]:
        return self.nodes[0].ranks()

    def _sum(self) -> None:
        """The fleet's totals; what every node receives alike (transfers) counts once with
        multicast, and the cluster-side CPU of the first node stands for all."""
        acc, accs = self.accounting, [n.accounting for n in self.nodes]
        acc.bytes_moved = (
            accs[0].bytes_moved if self.multicast else sum(a.bytes_moved for a in accs)
        )
        acc.bytes_projected = (
            accs[0].bytes_projected
            if self.multicast
            else math.fsum(a.bytes_projected for a in accs)
        )
        acc.cluster_cpu_seconds = accs[0].cluster_cpu_seconds
        acc.node_cpu_seconds = math.fsum(a.node_cpu_seconds for a in accs)
        acc.syncs_sent = accs[0].syncs_sent
        acc.syncs_landed = accs[0].syncs_landed
        acc.syncs_skipped_link_busy = accs[0].syncs_skipped_link_busy
        acc.transfer_seconds = accs[0].transfer_seconds
        acc.set_memory(sum(a.memory_overhead_bytes for a in accs))
        acc.set_measured(sum(a.measured_bytes for a in accs))
        self.newest_event_s = min(n.newest_event_s for n in self.nodes)
        self.learnt_until_id = max(n.learnt_until_id for n in self.nodes)


@dataclass(frozen=True)
class FleetTotals:
    """A strategy's update cost over the whole fleet, and per node (mean over nodes)."""

    nodes: int
    bytes_moved: float
    bytes_projected: float
    cpu_seconds: float  # cluster-side work once + every node's own update work
    node_cpu_seconds: float  # per node
    memory_peak_bytes: int  # fleet total of the per-node peaks
    node_memory_peak_bytes: int  # the largest node's peak (measured tensors)


def fleet_totals(strategy: Strategy, config: FleetConfig) -> FleetTotals:
    acc = strategy.accounting
    if isinstance(strategy, LocalFleet):
        accs = [n.accounting for n in strategy.nodes]
        peaks = [a.peak_measured_bytes for a in accs]
        return FleetTotals(
            nodes=len(accs),
            bytes_moved=float(acc.bytes_moved),
            bytes_projected=acc.bytes_projected,
            cpu_seconds=acc.cpu_seconds,
            node_cpu_seconds=math.fsum(a.node_cpu_seconds for a in accs) / len(accs),
            memory_peak_bytes=sum(peaks),
            node_memory_peak_bytes=max(peaks),
        )
    n, copies = config.nodes, config.transfers_per_sync
    return FleetTotals(
        nodes=n,
        bytes_moved=float(acc.bytes_moved * copies),
        bytes_projected=acc.bytes_projected * copies,
        cpu_seconds=acc.cluster_cpu_seconds + n * acc.node_cpu_seconds,
        node_cpu_seconds=acc.node_cpu_seconds,
        memory_peak_bytes=n * acc.peak_measured_bytes,
        node_memory_peak_bytes=acc.peak_measured_bytes,
    )
