"""Served requests waiting for their labels, keyed by request id (the trainer's pending buffer).

A served row becomes training data ``delay`` seconds after it was served, with its label, once
the label is known: either logged with the request (a replayed stream, finite labels) or sent
later through ``add_feedback``; a logged label is final (feedback for its request counts as
unknown), so only the rows served without one are indexed by request id. A row whose label
never comes is a negative after ``timeout`` seconds (CTR logging: no click is a no). The
buffer holds at most ``max_pending`` rows; the oldest served batches are dropped, and counted,
beyond that.
"""

from __future__ import annotations

import math
import sys
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.kernel import all_finite


@dataclass
class JoinCounts:
    served: int = 0
    joined: int = 0  # emitted with a real label
    timed_out: int = 0  # emitted as negatives after the timeout
    dropped: int = 0  # never emitted: the buffer was full
    unknown_feedback: int = 0  # feedback for a request that is not pending


@dataclass
class _Pending:
    batch: SparseBatch
    served_at: float
    labels: torch.Tensor  # (B,) float32, NaN = not known yet
    # per row: when due (float64, inf = not known yet) and whether emitted; both None for a
    # batch served with every label logged, emitted whole at served_at + delay
    ready_at: torch.Tensor | None
    emitted: torch.Tensor | None
    rows: dict[int, int] = field(default_factory=dict)  # request id -> row, unlabelled rows


class LabelJoin:
    def __init__(self, delay: float, timeout: float, max_pending: int) -> None:
        if not (0 <= delay < timeout and math.isfinite(timeout)):
            raise ValueError(f"need 0 <= label delay < timeout, got {delay} and {timeout}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.delay, self.timeout, self.max_pending = float(delay), float(timeout), max_pending
        self.counts = JoinCounts()
        self._entries: OrderedDict[int, _Pending] = OrderedDict()
        self._where: dict[int, int] = {}  # request id -> entry key
        self._next = 0
        self._pending_rows = 0

    @property
    def pending_rows(self) -> int:
        return self._pending_rows

    def nbytes(self) -> int:
        """Bytes of the pending batches, their label state and the request-id maps."""
        total = sys.getsizeof(self._where) + sys.getsizeof(self._entries)
        for entry in self._entries.values():
            own = (entry.labels, entry.ready_at, entry.emitted)  # labels: maybe the batch's
            state = (t for t in own if t is not None and t is not entry.batch.labels)
            total += entry.batch.nbytes + sum(t.numel() * t.element_size() for t in state)
            total += sys.getsizeof(entry.rows)
        return total

    def add_served(self, batch: SparseBatch, now: float) -> None:
        """Hold a served batch; its finite labels count as logged, NaN labels as unknown."""
        labels = batch.labels
        if labels.dtype != torch.float32:  # (.to's call costs as much as the check)
            labels = labels.to(torch.float32)
        rows = len(batch)
        entry = _Pending(batch, float(now), labels, None, None)
        key = self._next
        self._next += 1
        # a logged stream's batches have every label: one kernel call, no Python loop
        if not all_finite(labels):
            known = torch.isfinite(labels)
            entry.labels = labels.clone()  # feedback fills it in
            entry.ready_at = torch.full((rows,), math.inf, dtype=torch.float64)
            entry.ready_at[known] = now + self.delay
            entry.emitted = torch.zeros(rows, dtype=torch.bool)
            unknown = torch.nonzero(~known)[:, 0]
            rids = batch.request_ids[unknown].tolist()
            for row, rid in zip(unknown.tolist(), rids, strict=True):
                entry.rows[rid] = row
                self._where[rid] = key
        self._entries[key] = entry
        self._pending_rows += rows
        self.counts.served += rows
        while self._pending_rows > self.max_pending and len(self._entries) > 1:
            old_key, old = self._entries.popitem(last=False)
            left = len(old.batch) if old.emitted is None else int((~old.emitted).sum())
            self._forget(old_key, old, left)
            self.counts.dropped += left

    def add_feedback(self, request_ids: torch.Tensor, labels: torch.Tensor, now: float) -> int:
        """Labels for pending requests, usable from max(now, served + delay). Returns matches."""
        matched = 0
        for rid, label in zip(request_ids.tolist(), labels.tolist(), strict=True):
            key = self._where.get(rid)
            entry = self._entries.get(key) if key is not None else None
            if entry is None or entry.emitted is None or bool(entry.emitted[entry.rows[rid]]):
                self.counts.unknown_feedback += 1
                continue
            row = entry.rows[rid]
            entry.labels[row] = float(label)
            assert entry.ready_at is not None  # set with emitted
            entry.ready_at[row] = max(float(now), entry.served_at + self.delay)
            matched += 1
        return matched

    def pop_ready(self, now: float) -> list[SparseBatch]:
        """Joined batches whose labels are due by ``now`` (timed-out rows as negatives)."""
        out: list[SparseBatch] = []
        for key in list(self._entries):
            entry = self._entries[key]
            if entry.ready_at is None or entry.emitted is None:  # every label logged
                if entry.served_at + self.delay <= now:  # due at once (delay < timeout)
                    self._pop_logged(key, entry, out)
                continue
            timed_out = entry.served_at + self.timeout <= now
            due = (entry.ready_at <= now) & ~entry.emitted
            expired = torch.zeros_like(due)
            if timed_out:
                expired = ~entry.emitted & ~due
                entry.labels[expired] = 0.0
            take = due | expired
            if not bool(take.any()):
                continue
            n_take = int(take.sum())
            self.counts.joined += int(due.sum())
            self.counts.timed_out += int(expired.sum())
            batch = entry.batch.with_labels(entry.labels)
            out.append(batch if n_take == len(batch) else batch.select(torch.nonzero(take)[:, 0]))
            entry.emitted |= take
            self._pending_rows -= n_take
            if bool(entry.emitted.all()):
                self._forget(key, self._entries.pop(key), 0)
        return out

    def _pop_logged(self, key: int, entry: _Pending, out: list[SparseBatch]) -> None:
        """Emit a batch served with every label logged, whole (an empty one is dropped)."""
        rows = len(entry.batch)
        if rows:
            batch = entry.batch  # its own float32 labels (add_served's .to): no relabelled copy
            out.append(batch if entry.labels is batch.labels else batch.with_labels(entry.labels))
            self.counts.joined += rows
        self._forget(key, self._entries.pop(key), rows)

    def _forget(self, key: int, entry: _Pending, rows_left: int) -> None:
        for rid in entry.rows:
            if self._where.get(rid) == key:  # a reused id may point at a newer batch
                del self._where[rid]
        self._pending_rows -= rows_left
