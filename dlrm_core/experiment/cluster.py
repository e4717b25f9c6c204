"""The simulated training cluster and the cluster -> node link: the one home of the cluster's
model logic, for the experiment (simulated clock) and the demo (nodeworker.delta_cluster, real
time, shipping to a real node's ``apply_delta``).

The cluster is one DLRM trained continuously (``FullSparseTrainer``, sparse embedding gradients,
SGD or Adagrad) on the labelled events, in stream order, once their labels have arrived.
``ChangedRows`` tracks the rows its steps changed since they were last taken (a delta sync's or a
delta rebase's rows); ``SimulatedCluster.snapshot`` copies those rows, and the MLPs unless asked
not to, into a ``Payload`` with its bytes. In the experiment the ``Link`` says when that payload
lands on the node: transfer time = projected bytes / bandwidth.

Bytes of a payload: a full table is N * D * 4; a row set is m * (8 + 4 * D) (int64 id plus the
float32 row); the MLPs are their float32 parameters. Only table bytes are multiplied by the
link's scale (production tables are bigger; production MLPs are not).

A node receives and applies a payload in pieces of at most ``PIECE_BYTES`` (``Payload.pieces``):
while a payload lands the node holds one piece, a receive buffer of fixed size, never the whole
payload (until then the payload is on the wire: the cluster's, not the node's memory).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.config import LinkConfig
from dlrm_core.model import DLRM, DLRMConfig, base_weight
from dlrm_core.trainer import FullSparseTrainer, FullStepResult, FullTrainConfig

F32, I64 = 4, 8
PIECE_BYTES = 1 << 16  # what a node receives and applies at a time (a socket buffer's scale)


def rows_bytes(num_rows: int, dim: int) -> int:
    """Bytes of a row set: each row's int64 id and its D float32 values."""
    return num_rows * (I64 + F32 * dim)


def table_bytes(model: DLRM) -> int:
    """Bytes of all embedding tables of ``model`` (N * D * 4 each)."""
    return sum(F32 * n * model.config.embedding_dim for n in model.config.table_sizes)


def dense_state(model: DLRM) -> dict[str, torch.Tensor]:
    """Cloned MLP parameters (what every sync ships besides embedding rows)."""
    return {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if not name.startswith("sparse_arch.")
    }


def dense_bytes(model: DLRM) -> int:
    return sum(F32 * p.numel() for p in model.dense_parameters())


@dataclass(frozen=True)
class Payload:
    """What a sync moves: per table either all rows (ids None) or the rows at ``ids``."""

    tables: dict[str, tuple[torch.Tensor | None, torch.Tensor]]  # name -> (ids (m,), rows (m, D))
    dense: dict[str, torch.Tensor]
    table_bytes: int
    dense_bytes: int
    snapshot_s: float  # clock time the snapshot was taken
    newest_event_s: float  # newest event the snapshot has learnt from
    learnt_until_id: int  # largest request id the snapshot has learnt from
    # a piece's part of a bigger MLP parameter: its dense value is that parameter's flattened
    # elements from this offset on (Payload.pieces); a parameter not named here comes whole
    dense_at: dict[str, int] = field(default_factory=dict)

    @property
    def bytes(self) -> int:
        return self.table_bytes + self.dense_bytes

    def pieces(self, max_bytes: int = PIECE_BYTES) -> Iterator[Payload]:
        """The payload as a node receives it: pieces of at most ``max_bytes`` (a single row
        may be bigger), each a copy of its part (its own storage, freed once applied), the
        table rows first (a whole table as explicit row ids), then the MLPs (a parameter
        bigger than a piece in parts of its flattened elements, ``dense_at``). Applied in order
        they write what ``apply_to`` writes."""
        dim = next((rows.shape[1] for _, rows in self.tables.values()), 0)
        for name, (ids, rows) in self.tables.items():
            whole = ids is None
            step = max(max_bytes // (F32 * dim if whole else rows_bytes(1, dim)), 1)
            for start in range(0, rows.shape[0], step):
                part = rows[start : start + step].clone()
                n = part.shape[0]
                part_ids = (
                    torch.arange(start, start + n)
                    if ids is None
                    else ids[start : start + n].clone()
                )
                nbytes = F32 * part.numel() if whole else rows_bytes(n, dim)
                yield self._piece({name: (part_ids, part)}, {}, nbytes, 0)
        group: dict[str, torch.Tensor] = {}
        for name, value in self.dense.items():
            if F32 * value.numel() > max_bytes:
                yield from self._dense_parts(name, value, max_bytes)
                continue
            if group and _nbytes(group.values()) + F32 * value.numel() > max_bytes:
                yield self._piece({}, group, 0, _nbytes(group.values()))
                group = {}
            group[name] = value.clone()
        if group:
            yield self._piece({}, group, 0, _nbytes(group.values()))

    def _dense_parts(self, name: str, value: torch.Tensor, max_bytes: int) -> Iterator[Payload]:
        flat, step = value.reshape(-1), max(max_bytes // F32, 1)
        for start in range(0, flat.numel(), step):
            part = flat[start : start + step].clone()
            yield self._piece({}, {name: part}, 0, F32 * part.numel(), {name: start})

    def _piece(
        self,
        tables: dict[str, tuple[torch.Tensor | None, torch.Tensor]],
        dense: dict[str, torch.Tensor],
        table_bytes: int,
        dense_bytes: int,
        dense_at: dict[str, int] | None = None,
    ) -> Payload:
        return Payload(tables, dense, table_bytes, dense_bytes, self.snapshot_s,
                       self.newest_event_s, self.learnt_until_id, dense_at or {})  # fmt: skip

    def apply_to(self, model: DLRM) -> None:
        """Write the payload's rows and MLP parameters into ``model``."""
        with torch.no_grad():
            for name, (ids, rows) in self.tables.items():
                weight = base_weight(model, name)
                if ids is None:
                    weight.copy_(rows)
                else:
                    weight[ids] = rows
        self.write_dense(model)

    def write_dense(self, model: DLRM) -> None:
        """Write the payload's MLP parameters (or parts of them, ``dense_at``) into ``model``."""
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in self.dense.items():
                at = self.dense_at.get(name)
                if at is None:
                    params[name].copy_(value)
                else:
                    params[name].view(-1)[at : at + value.numel()].copy_(value)


def _nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(F32 * t.numel() for t in tensors)


class ChangedRows:
    """The rows of each table the cluster changed since they were last taken (a delta sync's or
    a delta rebase's payload): a saturating count of the cluster steps that touched each row
    since, so it costs one byte per table row however long the rows wait. ``min_steps`` > 1
    takes only rows changed by at least that many steps; the others keep their count for a
    later take."""

    MAX_COUNT = 255

    def __init__(self, config: DLRMConfig, min_steps: int = 1) -> None:
        if not 1 <= min_steps <= self.MAX_COUNT:
            raise ValueError(f"min_steps must be in [1, {self.MAX_COUNT}], got {min_steps}")
        self.min_steps = min_steps
        self.steps = {
            name: torch.zeros(n, dtype=torch.uint8)
            for name, n in zip(config.feature_names, config.table_sizes, strict=True)
        }

    def mark(self, result: FullStepResult) -> None:
        for name, (ids, _) in result.touched.items():
            counts = self.steps[name]
            counts[ids] = counts[ids].clamp(max=self.MAX_COUNT - 1) + 1

    def take(self) -> dict[str, torch.Tensor | None]:
        """Per table the sorted ids changed by >= min_steps steps since their last take (maybe
        none); their counts restart."""
        out: dict[str, torch.Tensor | None] = {}
        for name, counts in self.steps.items():
            ids = torch.nonzero(counts >= self.min_steps).squeeze(1)
            counts[ids] = 0
            out[name] = ids
        return out

    def put_back(self, taken: dict[str, torch.Tensor | None]) -> None:
        """Mark ``taken`` changed again (their send failed: they ride with the next one)."""
        for name, ids in taken.items():
            if ids is not None:
                counts = self.steps[name]
                counts[ids] = counts[ids].clamp(min=self.min_steps)


class Link:
    """One transfer at a time from the cluster to one node, at ``bandwidth`` with ``scale``."""

    def __init__(self, config: LinkConfig, scale: float) -> None:
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"scale must be a positive number, got {scale}")
        self.config = config
        self.scale = float(scale)
        self.busy_until = -math.inf

    def transfer_seconds(self, table_bytes: int, other_bytes: int = 0) -> float:
        """Seconds to move ``table_bytes`` (projected by scale) plus ``other_bytes``."""
        return (table_bytes * self.scale + other_bytes) / self.config.bytes_per_second

    def busy(self, now: float) -> bool:
        return now < self.busy_until

    def send(self, payload: Payload, now: float) -> float:
        """Start sending at ``now`` (the link must be free); returns the landing time."""
        if self.busy(now):
            raise RuntimeError("the link is busy; a sync must wait for the previous one")
        self.busy_until = now + self.transfer_seconds(payload.table_bytes, payload.dense_bytes)
        return self.busy_until


def projection_scale(config: LinkConfig, experiment_table_bytes: int) -> float:
    """Link scale projecting the experiment's tables to ``target_table_bytes``, times the
    sweep's ``scale_factor``."""
    if config.target_table_bytes is None:
        return config.scale_factor
    return config.scale_factor * config.target_table_bytes / experiment_table_bytes


class SimulatedCluster:
    """The training cluster: full sparse SGD on the labelled stream, shared by all syncs."""

    def __init__(
        self, model: DLRM, config: FullTrainConfig, newest_event_s: float, learnt_until_id: int
    ) -> None:
        self.model = model
        self.trainer = FullSparseTrainer(model, config)
        self.newest_event_s = newest_event_s
        self.learnt_until_id = learnt_until_id
        self.cpu_seconds = 0.0
        self.steps = 0
        # strategies that track the rows a step changes (dirty sets, priorities)
        self.listeners: list[Callable[[FullStepResult, float], None]] = []

    def train(self, batch: SparseBatch, now: float) -> FullStepResult:
        start = time.process_time()
        result = self.trainer.step(batch)
        self.cpu_seconds += time.process_time() - start
        self.steps += 1
        self.newest_event_s = max(self.newest_event_s, float(batch.timestamps.max()))
        self.learnt_until_id = max(self.learnt_until_id, int(batch.request_ids.max()))
        for listener in self.listeners:
            listener(result, now)
        return result

    def snapshot(
        self, now: float, rows: dict[str, torch.Tensor | None] | None = None, mlps: bool = True
    ) -> Payload:
        """A payload of the whole model (rows=None) or of the given rows of each table
        (a table mapped to None ships whole; one with no rows is left out), with the MLPs
        unless ``mlps`` is False."""
        dim = self.model.config.embedding_dim
        names = self.model.config.feature_names
        wanted: dict[str, torch.Tensor | None] = (
            dict.fromkeys(names) if rows is None else dict(rows)
        )
        tables: dict[str, tuple[torch.Tensor | None, torch.Tensor]] = {}
        nbytes = 0
        for name, ids in wanted.items():
            weight = base_weight(self.model, name).detach()
            if ids is None:
                tables[name] = (None, weight.clone())
                nbytes += F32 * weight.numel()
            elif ids.numel():
                tables[name] = (ids, weight[ids].clone())
                nbytes += rows_bytes(int(ids.numel()), dim)
        return Payload(
            tables=tables,
            dense=dense_state(self.model) if mlps else {},
            table_bytes=nbytes,
            dense_bytes=dense_bytes(self.model) if mlps else 0,
            snapshot_s=now,
            newest_event_s=self.newest_event_s,
            learnt_until_id=self.learnt_until_id,
        )


def pretrain_base(
    model: DLRM, batches: Iterable[SparseBatch], events: int, lr: float = 0.05
) -> int:
    """Train ``model`` (MLPs and rows, Adagrad) on the stream's first ``events`` events: the demo's
    shared base checkpoint of its nodes and its cluster. Returns the events learnt."""
    trainer = FullSparseTrainer(model, FullTrainConfig("adagrad", lr, lr))
    seen = 0
    for batch in batches:
        if seen >= events:
            break
        trainer.step(batch)
        seen += len(batch)
    return seen
