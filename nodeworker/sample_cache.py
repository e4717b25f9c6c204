"""Served requests waiting for their label, joined with feedback into training rows.

A served row is kept once, in the columns of nodeworker/join_rows.py (a waiting row costs its data
bytes); each waits (found by request id) until its label arrives or the label window times out,
when it becomes a negative (CTR logging: no click is a no). Joined rows queue up for the trainer.
Both the waiting rows and the ready queue are bounded: the oldest go first, and every row that
leaves without being trained on is counted. ``nbytes`` is what the columns hold (the trainer's
memory account counts it).

No torch.Tensor is kept: the garbage collector tracks every one (and walked the ~6,000 batches
once waiting here in 10-20 ms per full collection, stalling inference), but not numpy arrays.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from nodeworker.join_rows import PENDING, READY, JoinRows, RidQueue


@dataclass(frozen=True)
class SampleCacheConfig:
    label_window_s: float = 30.0  # a request with no label after this is a negative
    max_pending: int = 200_000  # requests waiting for a label
    max_ready: int = 100_000  # joined rows the trainer has not taken yet

    def __post_init__(self) -> None:
        if self.label_window_s <= 0 or self.max_pending < 1 or self.max_ready < 1:
            raise ValueError("label_window_s must be > 0, max_pending and max_ready >= 1")


@dataclass(frozen=True)
class JoinedRows:
    batch: SparseBatch  # labels filled in
    label_times: torch.Tensor  # (B,) float64: when each label became known (arrival or timeout)
    scores: np.ndarray  # (B,) float32: what inference served them (nan when not known)


class Feedback(enum.Enum):
    JOINED = "joined"
    UNKNOWN = "unknown"  # never served by this node
    GONE = "gone"  # served, but already labelled, timed out or dropped


@dataclass
class CacheCounts:
    served: int = 0
    joined: int = 0  # labelled by feedback in time
    expired: int = 0  # timed out, emitted as negatives
    dropped_pending: int = 0  # evicted unlabelled (max_pending reached): never trained on
    dropped_ready: int = 0  # joined but evicted before the trainer took them (max_ready)
    taken: int = 0  # handed to the trainer
    unknown_feedback: int = 0
    late_feedback: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


class SampleCache:
    def __init__(self, config: SampleCacheConfig | None = None, clock=time.time):
        self.config = config or SampleCacheConfig()
        self.clock = clock
        self.counts = CacheCounts()
        self._keys: tuple[str, ...] = ()
        self._rows: JoinRows | None = None  # its columns, once the first batch gives a shape
        self._ready = RidQueue()  # request ids in the order their labels became known
        self._pending = 0  # rows waiting for a label
        self._plo = 0  # the oldest pending row's position (hi when none)
        self._max_id = -1
        self._last_served = -math.inf
        self._lock = threading.Lock()

    def put_arrays(
        self,
        keys: tuple[str, ...],
        values: tuple[np.ndarray, ...],
        offsets: tuple[np.ndarray, ...],
        dense: np.ndarray,
        timestamps: np.ndarray,
        ids: np.ndarray,
        now: float | None = None,
        scores: np.ndarray | None = None,
    ) -> None:
        """Keep a served batch as numpy arrays (copied into the cache's columns), what the feed
        reads from its ring, with the scores inference served (nan when not given); its request
        ids must be new and larger than any seen before."""
        now = self.clock() if now is None else now
        ids = np.asarray(ids, dtype=np.int64)
        with self._lock:
            if len(ids) and (ids[0] <= self._max_id or np.any(np.diff(ids) <= 0)):
                raise ValueError("request ids must be unique and increase across batches")
            if not len(ids):
                return
            if self._rows is None:
                self._keys, self._rows = keys, JoinRows(len(keys), dense.shape[1])
            rows = self._rows
            plo_rid = rows.rid[self._plo] if self._plo < rows.hi else None
            # the served times are kept non-decreasing: expiry walks them in serving order
            self._last_served = max(self._last_served, now)
            score = np.full(len(ids), np.nan, np.float32) if scores is None else scores
            served = self._last_served
            start, _ = rows.append(ids, served, timestamps, score, dense, values, offsets)
            self._plo = start if plo_rid is None else int(rows.find(np.array([plo_rid]))[0])
            self._pending += len(ids)
            self._max_id = int(ids[-1])
            self.counts.served += len(ids)
            if self._pending > self.config.max_pending:
                self._drop_pending(self._pending - self.config.max_pending)
            self._expire(now)

    def feedback(self, request_id: int, label: float, now: float | None = None) -> Feedback:
        now = self.clock() if now is None else now
        with self._lock:
            self._expire(now)
            rows = self._rows
            pos = -1 if rows is None else int(rows.find(np.array([request_id]))[0])
            if pos < 0 or rows is None or rows.state[pos] != PENDING:
                if 0 <= request_id <= self._max_id:
                    self.counts.late_feedback += 1
                    return Feedback.GONE
                self.counts.unknown_feedback += 1
                return Feedback.UNKNOWN
            self._make_ready(np.array([pos]), float(label), np.array([now]))
            self.counts.joined += 1
            return Feedback.JOINED

    def expire(self, now: float | None = None) -> int:
        """Turn requests older than the label window into negatives; returns how many."""
        with self._lock:
            return self._expire(self.clock() if now is None else now)

    def take(self, max_rows: int, now: float | None = None) -> JoinedRows | None:
        """Up to ``max_rows`` joined rows, oldest first, as one batch (None when none ready)."""
        with self._lock:
            self._expire(self.clock() if now is None else now)
            rows = self._rows
            if rows is None or not len(self._ready):
                return None
            pos = rows.find(self._ready.pop(max_rows))
            values, offsets = rows.gather(pos)
            batch = SparseBatch(
                self._keys,
                tuple(torch.from_numpy(v) for v in values),
                tuple(torch.from_numpy(o) for o in offsets),
                torch.from_numpy(rows.dense[pos]),
                torch.from_numpy(rows.label[pos]),
                torch.from_numpy(rows.stamp[pos]),
                torch.from_numpy(rows.rid[pos]),
            )
            joined = JoinedRows(batch, torch.from_numpy(rows.label_at[pos]), rows.score[pos])
            self._release(pos)
            self.counts.taken += len(pos)
        return joined

    def sizes(self) -> dict[str, int]:
        with self._lock:
            # held: the rows whose columns are kept (from the oldest row not taken, some taken)
            held = self._rows.hi - self._rows.lo if self._rows is not None else 0
            return {"pending": self._pending, "ready": len(self._ready), "held": held}

    def nbytes(self) -> int:
        """Bytes the cache holds: its columns and the ready queue."""
        with self._lock:
            held = self._rows.nbytes() if self._rows is not None else 0
            return held + self._ready.nbytes

    # --- internals (lock held) ---

    def _expire(self, now: float) -> int:
        rows = self._rows
        if rows is None or self._plo >= rows.hi:
            return 0
        cutoff = now - self.config.label_window_s
        if rows.served[self._plo] > cutoff:
            return 0
        end = self._plo + int(np.searchsorted(rows.served[self._plo : rows.hi], cutoff, "right"))
        pos = np.flatnonzero(rows.state[self._plo : end] == PENDING) + self._plo
        self._make_ready(pos, 0.0, rows.served[pos] + self.config.label_window_s)
        self.counts.expired += len(pos)
        return len(pos)

    def _drop_pending(self, n: int) -> None:
        """Drop the ``n`` oldest pending rows (max_pending): never trained on, counted."""
        rows = self._rows
        assert rows is not None
        pos = np.flatnonzero(rows.state[self._plo : rows.hi] == PENDING)[:n] + self._plo
        self._pending -= len(pos)
        self.counts.dropped_pending += len(pos)
        self._release(pos)
        self._advance_plo()

    def _make_ready(self, pos: np.ndarray, label: float, at: np.ndarray) -> None:
        rows = self._rows
        assert rows is not None
        rows.state[pos] = READY
        rows.label[pos] = label
        rows.label_at[pos] = at
        self._pending -= len(pos)
        self._ready.push(rows.rid[pos])
        self._advance_plo()
        over = len(self._ready) - self.config.max_ready
        if over > 0:
            self._release(rows.find(self._ready.pop(over)))
            self.counts.dropped_ready += over

    def _advance_plo(self) -> None:
        rows = self._rows
        assert rows is not None
        if self._plo < rows.hi and rows.state[self._plo] == PENDING:
            return
        waiting = np.flatnonzero(rows.state[self._plo : rows.hi] == PENDING)
        self._plo = self._plo + int(waiting[0]) if len(waiting) else rows.hi

    def _release(self, pos: np.ndarray) -> None:
        rows = self._rows
        assert rows is not None
        rows.release(pos)
        self._plo = max(self._plo, rows.lo)
