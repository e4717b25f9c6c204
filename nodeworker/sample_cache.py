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
import math
import sys
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
    max_bytes: int = 2**62  # and at most this many bytes held (nbytes; a node's budget share)

    def __post_init__(self) -> None:
        if self.label_window_s <= 0 or self.max_pending < 1 or self.max_ready < 1:
            raise ValueError("label_window_s must be > 0, max_pending and max_ready >= 1")
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")


@dataclass(frozen=True)
class JoinedRows:
    batch: SparseBatch  # labels filled in
    label_times: torch.Tensor  # (B,) float64: when each label became known (arrival or timeout)
    scores: np.ndarray  # (B,) float64: what serving scored each row (nan when not given)


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


# a served batch as kept: keys, values, bag bounds (offsets + nnz), dense, timestamps, ids,
# scores (None: not given)
_Kept = tuple[
    tuple[str, ...],
    tuple[np.ndarray, ...],
    tuple[tuple[int, ...], ...],
    np.ndarray,
    tuple[float, ...],
    tuple[int, ...],
    np.ndarray | None,
]
# bytes a row holds beside its containers' slots (sys.getsizeof of the dicts and the deque:
# a dict keeps the table of its largest size) while it waits for its label (its (served at,
# batch key, row) tuple) and once joined (its (key, row, label, at) tuple and two floats);
# tests/unit/test_feed.py holds Feed.nbytes to within 15-20% of what tracemalloc measures
PENDING_ROW_BYTES = 64
READY_ROW_BYTES = 120


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
        self._kept_bytes: dict[int, int] = {}  # a kept batch's bytes (_held_bytes)
        self._held = 0  # their sum
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
        scores: np.ndarray | None = None,
    ) -> None:
        """``put`` of a batch as numpy arrays, kept as they are (the caller's must not change):
        what the feed reads from its ring, without building a SparseBatch per request;
        ``scores``: what serving scored its rows, handed on with them (JoinedRows.scores)."""
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
                scores,
            )
            self._refs[key] = len(ids)
            self._kept_bytes[key] = _held_bytes(self._batches[key])
            self._held += self._kept_bytes[key]
            for row, rid in enumerate(ids):
                self._pending[rid] = (now, key, row)
            self._max_id = max(ids)
            self.counts.served += len(ids)
            while len(self._pending) > self.config.max_pending or (
                len(self._pending) > 1 and self._nbytes() > self.config.max_bytes
            ):
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
            batch, scores = self._gather(picked)
            for key, _, _, _ in picked:
                self._release(key)
            self.counts.taken += len(picked)
        times = torch.tensor([t for *_, t in picked], dtype=torch.float64)
        return JoinedRows(batch, times, scores)

    def nbytes(self) -> int:
        """Bytes the cache holds: its kept batches and its waiting and joined rows."""
        with self._lock:
            return self._nbytes()

    def sizes(self) -> dict[str, int]:
        with self._lock:
            return {
                "pending": len(self._pending),
                "ready": len(self._ready),
                "batches": len(self._batches),
            }

    # --- internals (lock held) ---

    def _nbytes(self) -> int:
        rows = len(self._pending) * PENDING_ROW_BYTES + len(self._ready) * READY_ROW_BYTES
        tables = (self._pending, self._ready, self._batches, self._refs, self._kept_bytes)
        return self._held + rows + sum(map(sys.getsizeof, tables))

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
            self._held -= self._kept_bytes.pop(key)

    def _gather(
        self, picked: list[tuple[int, int, float, float]]
    ) -> tuple[SparseBatch, np.ndarray]:
        """One batch of the picked rows, labels filled in (rows of many small served batches:
        slicing each bag is far cheaper than SparseBatch.select + concat per row), and their
        served scores."""
        keys = self._batches[picked[0][0]][0]
        n_features = len(keys)
        values: list[list[np.ndarray]] = [[] for _ in range(n_features)]
        lengths: list[list[int]] = [[] for _ in range(n_features)]
        dense, stamps, rids, scores = [], [], [], []
        for key, row, _, _ in picked:
            _, kept_values, bounds, kept_dense, times, kept_ids, kept_scores = self._batches[key]
            scores.append(math.nan if kept_scores is None else float(kept_scores[row]))
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
        batch = SparseBatch(
            keys,
            tuple(torch.from_numpy(np.concatenate(v)) for v in values),
            tuple(offsets),
            torch.from_numpy(np.stack(dense)),
            torch.tensor([label for _, _, label, _ in picked], dtype=torch.float32),
            torch.tensor(stamps, dtype=torch.float64),
            torch.tensor(rids, dtype=torch.int64),
        )
        return batch, np.array(scores)


def _held_bytes(kept: _Kept) -> int:
    """What a kept batch holds in memory: its tuples, numbers and arrays, each buffer once (the
    feed's arrays are views of one record)."""
    _, values, bounds, dense, times, ids, scores = kept
    arrays = [*values, dense, *([] if scores is None else [scores])]
    buffers = {id(a.base): a.base for a in arrays if a.base is not None}
    nbytes = sum(sys.getsizeof(a) for a in arrays) + sum(map(sys.getsizeof, buffers.values()))
    nbytes += sys.getsizeof(kept) + sys.getsizeof(bounds)
    # each distinct float and each int past the small ones Python caches: 24 and 32 bytes
    nbytes += sum(sys.getsizeof(b) + sum(32 for x in b if x > 256) for b in bounds)
    nbytes += sys.getsizeof(times) + 24 * len({id(t) for t in times})
    nbytes += sys.getsizeof(ids) + sum(32 for x in ids if x > 256)
    return nbytes + 32  # its key (an int)
