"""Served requests waiting for their label, joined with feedback into training rows.

A served batch is kept once; each of its rows waits (keyed by request id) until its label
arrives or the label window times out, when it becomes a negative (CTR logging: no click is a
no). Joined rows queue up for the trainer. Both the waiting rows and the ready queue are bounded:
the oldest go first, and every row that leaves without being trained on is counted.

A kept batch is a tuple of private numpy copies and tuples of numbers, not a SparseBatch of
tensors: the garbage collector tracks every torch.Tensor (and walked the ~6,000 of them waiting
here in 10-20 ms per full collection, stalling inference), but neither numpy arrays nor tuples
holding only untracked objects.
"""

from __future__ import annotations

import enum
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_core.batch import SparseBatch


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


# a served batch as kept: keys, values, bag bounds (offsets + nnz), dense, timestamps, ids
_Kept = tuple[
    tuple[str, ...],
    tuple[np.ndarray, ...],
    tuple[tuple[int, ...], ...],
    np.ndarray,
    tuple[float, ...],
    tuple[int, ...],
]


class SampleCache:
    def __init__(self, config: SampleCacheConfig | None = None, clock=time.time):
        self.config = config or SampleCacheConfig()
        self.clock = clock
        self.counts = CacheCounts()
        # request id -> (served at, batch key, row); insertion order is serving order.
        self._pending: OrderedDict[int, tuple[float, int, int]] = OrderedDict()
        # (batch key, row, label, label time), oldest first.
        self._ready: deque[tuple[int, int, float, float]] = deque()
        self._batches: dict[int, _Kept] = {}
        self._refs: dict[int, int] = {}
        self._next_key = 0
        self._max_id = -1
        self._lock = threading.Lock()

    def put(self, batch: SparseBatch, now: float | None = None) -> None:
        """Keep a served batch; its request ids must be new and larger than any seen before."""
        self.put_arrays(
            batch.keys,
            tuple(v.numpy().copy() for v in batch.values),
            tuple(o.numpy() for o in batch.offsets),
            batch.dense.numpy().copy(),
            batch.timestamps.tolist(),
            batch.request_ids.tolist(),
            now,
        )

    def put_arrays(
        self,
        keys: tuple[str, ...],
        values: tuple[np.ndarray, ...],
        offsets: tuple[np.ndarray, ...],
        dense: np.ndarray,
        timestamps: list[float],
        ids: list[int],
        now: float | None = None,
    ) -> None:
        """``put`` of a batch as numpy arrays, kept as they are (the caller's must not change):
        what the feed reads from its ring, without building a SparseBatch per request."""
        now = self.clock() if now is None else now
        with self._lock:
            if ids and (min(ids) <= self._max_id or len(set(ids)) != len(ids)):
                raise ValueError("request ids must be unique and increase across batches")
            if not ids:
                return
            key = self._next_key
            self._next_key += 1
            self._batches[key] = (
                keys,
                values,
                # bag bounds as tuples: gathering a row's bag is two index lookups
                tuple((*o.tolist(), int(v.shape[0])) for v, o in zip(values, offsets, strict=True)),
                dense,
                tuple(timestamps),
                tuple(ids),
            )
            self._refs[key] = len(ids)
            for row, rid in enumerate(ids):
                self._pending[rid] = (now, key, row)
            self._max_id = max(ids)
            self.counts.served += len(ids)
            while len(self._pending) > self.config.max_pending:
                _, (_, k, _) = self._pending.popitem(last=False)
                self._release(k)
                self.counts.dropped_pending += 1
            self._expire(now)

    def feedback(self, request_id: int, label: float, now: float | None = None) -> Feedback:
        now = self.clock() if now is None else now
        with self._lock:
            self._expire(now)
            entry = self._pending.pop(request_id, None)
            if entry is None:
                if 0 <= request_id <= self._max_id:
                    self.counts.late_feedback += 1
                    return Feedback.GONE
                self.counts.unknown_feedback += 1
                return Feedback.UNKNOWN
            _, key, row = entry
            self._push_ready(key, row, float(label), now)
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
            picked = [self._ready.popleft() for _ in range(min(max_rows, len(self._ready)))]
            if not picked:
                return None
            batch = self._gather(picked)
            for key, _, _, _ in picked:
                self._release(key)
            self.counts.taken += len(picked)
        return JoinedRows(batch, torch.tensor([t for *_, t in picked], dtype=torch.float64))

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending": len(self._pending),
                "ready": len(self._ready),
                "batches": len(self._batches),
            }

    # --- internals (lock held) ---

    def _expire(self, now: float) -> int:
        cutoff = now - self.config.label_window_s
        n = 0
        while self._pending:
            rid, (served_at, key, row) = next(iter(self._pending.items()))
            if served_at > cutoff:
                break
            del self._pending[rid]
            self._push_ready(key, row, 0.0, served_at + self.config.label_window_s)
            n += 1
        self.counts.expired += n
        return n

    def _push_ready(self, key: int, row: int, label: float, at: float) -> None:
        self._ready.append((key, row, label, at))
        while len(self._ready) > self.config.max_ready:
            old_key, _, _, _ = self._ready.popleft()
            self._release(old_key)
            self.counts.dropped_ready += 1

    def _release(self, key: int) -> None:
        self._refs[key] -= 1
        if self._refs[key] == 0:
            del self._refs[key], self._batches[key]

    def _gather(self, picked: list[tuple[int, int, float, float]]) -> SparseBatch:
        """One batch of the picked rows, labels filled in (rows of many small served batches:
        slicing each bag is far cheaper than SparseBatch.select + concat per row)."""
        keys = self._batches[picked[0][0]][0]
        n_features = len(keys)
        values: list[list[np.ndarray]] = [[] for _ in range(n_features)]
        lengths: list[list[int]] = [[] for _ in range(n_features)]
        dense, stamps, rids = [], [], []
        for key, row, _, _ in picked:
            _, kept_values, bounds, kept_dense, times, kept_ids = self._batches[key]
            for f in range(n_features):
                low, high = bounds[f][row], bounds[f][row + 1]
                values[f].append(kept_values[f][low:high])
                lengths[f].append(high - low)
            dense.append(kept_dense[row])
            stamps.append(times[row])
            rids.append(kept_ids[row])
        offsets = []
        for f in range(n_features):
            lens = np.array(lengths[f], dtype=np.int64)
            offsets.append(torch.from_numpy(np.cumsum(lens) - lens))
        return SparseBatch(
            keys,
            tuple(torch.from_numpy(np.concatenate(v)) for v in values),
            tuple(offsets),
            torch.from_numpy(np.stack(dense)),
            torch.tensor([label for _, _, label, _ in picked], dtype=torch.float32),
            torch.tensor(stamps, dtype=torch.float64),
            torch.tensor(rids, dtype=torch.int64),
        )
