"""The feed from inference to the trainer, off the inference process's request path and GIL.

Inference appends each served request once (features, scores, serving time) to a shared-memory
ring and each feedback label to another; the reading side (the trainer process, or a thread of
the inference process when the node has no trainer) merges both streams in time order into the
SampleCache, which keeps its semantics there: the label window, delayed labels, timeouts as
negatives, bounded memory with every drop counted. Joined rows go to the quality window and to
a bounded backlog of training batches (oldest dropped first). Before, the join and the packing
ran in the inference process under its GIL (10-16% of its cpu per request, on the bench).

Inference answers feedback at once (joined / unknown / gone) from a small id-indexed ledger of
served times, the same rules the cache applies: an id never served is unknown; one already
labelled, past the label window, or older than ``capacity`` ids is gone. The rings are
nodeworker/feed_rings.py's.
"""

from __future__ import annotations

import struct
import threading
import time
from array import array
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from nodeworker.feed_rings import FeedRings, record_spans
from nodeworker.sample_cache import Feedback, SampleCache, SampleCacheConfig

_LABEL = struct.Struct("<qdd")  # request id, label, arrival time
# a label as the ring holds it: its length (24) and _LABEL, 32 bytes, no padding
_LABEL_RECORD = np.dtype([("length", "<i8"), ("rid", "<i8"), ("label", "<f8"), ("at", "<f8")])
_SERVED = struct.Struct("<qqd")  # first request id, rows, served at
POLL_BYTES = 256 << 10  # a reader copies at most this much of a ring at a time


# --- the inference side --------------------------------------------------------------------


class FeedWriter:
    """What inference does per request and per label: one append each, plus the ledger that
    answers feedback. ``serve`` is called under the inference lock (one writer)."""

    def __init__(self, rings: FeedRings, label_window_s: float, capacity: int, clock=time.time):
        self.rings = rings
        self.window = label_window_s
        self.clock = clock
        self._size = 1 << max(1, capacity - 1).bit_length()  # ids -> slots by a mask
        # arrays, not numpy (an item access is ~30 ns instead of ~100) nor lists (not GC-tracked)
        self._ids = array("q", [-1]) * self._size
        self._served_at = array("d", [0.0]) * self._size
        self._open = array("b", [0]) * self._size
        self._max_id = -1
        self._lock = threading.Lock()  # feedback comes from many threads
        self.unknown_feedback = 0
        self.late_feedback = 0
        self.ring_dropped_rows = 0  # served rows the full ring could not take: never trained on
        self.ring_dropped_labels = 0  # labels it could not take: their rows time out as negatives

    def serve(self, batch: SparseBatch, scores: torch.Tensor, first_id: int, at: float) -> None:
        """Log a served request (its ids are first_id, first_id + 1, ...)."""
        n = len(batch)
        payload = b"".join(
            (
                _SERVED.pack(first_id, n, at),
                struct.pack(f"<{len(batch.values)}q", *(v.shape[0] for v in batch.values)),
                scores.numpy().tobytes(),
                batch.dense.numpy().tobytes(),
                *(o.numpy().tobytes() for o in batch.offsets),
                *(v.numpy().tobytes() for v in batch.values),
            )
        )
        written = self.rings.served.write(payload)
        self._max_id = first_id + n - 1
        if not written:
            self.ring_dropped_rows += n
        else:  # rows the ring dropped never join: their feedback is "gone"
            low, high = first_id & (self._size - 1), (first_id + n - 1) & (self._size - 1)
            if low <= high:
                self._ids[low : high + 1] = array("q", range(first_id, first_id + n))
                self._served_at[low : high + 1] = array("d", [at]) * n
                self._open[low : high + 1] = array("b", [1]) * n
            else:
                for rid in range(first_id, first_id + n):
                    slot = rid & (self._size - 1)
                    self._ids[slot], self._served_at[slot], self._open[slot] = rid, at, 1

    def feedback(self, request_id: int, label: float) -> Feedback:
        with self._lock:
            now = self.clock()
            if not 0 <= request_id <= self._max_id:
                self.unknown_feedback += 1
                return Feedback.UNKNOWN
            slot = request_id & (self._size - 1)
            if (
                self._ids[slot] != request_id
                or not self._open[slot]
                or self._served_at[slot] <= now - self.window
            ):
                self.late_feedback += 1
                return Feedback.GONE
            self._open[slot] = 0
            if not self.rings.labels.write(_LABEL.pack(request_id, float(label), now)):
                self.ring_dropped_labels += 1
            return Feedback.JOINED

    def counts(self) -> dict[str, int]:
        return {
            "unknown_feedback": self.unknown_feedback,
            "late_feedback": self.late_feedback,
            "ring_dropped_rows": self.ring_dropped_rows,
            "ring_dropped_labels": self.ring_dropped_labels,
        }


# --- the reading side ----------------------------------------------------------------------


def _served_requests(n_features: int, n_dense: int, block: bytes) -> Iterator:
    """(served at, ids, values, offsets, dense, scores) of each served record of a block the
    ring read, as numpy views of it (the cache copies them into its arenas)."""
    for start, _ in record_spans(block):
        first, n, at = _SERVED.unpack_from(block, start)
        pos = start + _SERVED.size
        n_values = struct.unpack_from(f"<{n_features}q", block, pos)
        pos += 8 * n_features
        arrays = []
        for dtype, count in (
            (np.float32, n),
            (np.float32, n * n_dense),
            *((np.int64, n) for _ in range(n_features)),
            *((np.int64, k) for k in n_values),
        ):
            arrays.append(np.frombuffer(block, dtype=dtype, count=count, offset=pos))
            pos += arrays[-1].nbytes
        ids = np.arange(first, first + n, dtype=np.int64)
        values, offsets = tuple(arrays[2 + n_features :]), tuple(arrays[2 : 2 + n_features])
        yield at, ids, values, offsets, arrays[1].reshape(n, n_dense), arrays[0]


@dataclass(frozen=True)
class FeedReport:
    counts: dict[str, int]  # the sample cache's counts (CacheCounts)
    sizes: dict[str, int]  # rows waiting: for a label ("pending"), joined ("ready"), backlog
    dropped_backlog: int  # joined rows dropped before the trainer took them
    to_trainer: int  # joined rows handed to the trainer
    labels: np.ndarray  # (n,) of the rows joined since the last report
    scores: np.ndarray  # (n,) what inference served them (nan when unknown)
    join_bytes: int = 0  # what the label join's arenas hold (accounted beside the budget's cap)


@dataclass(frozen=True)
class FeedConfig:
    label_window_s: float = 30.0
    max_pending: int = 200_000
    max_ready: int = 100_000
    batch_rows: int = 256
    backlog_batches: int = 64  # joined batches waiting for the trainer; oldest dropped
    backlog_bytes: int = 2**62  # and at most this many bytes of them (a node's budget share)
    train: bool = True  # False: join for the quality metrics only (a node without trainer)


class Feed:
    """The reading side: rings -> SampleCache -> quality rows and training batches."""

    def __init__(
        self,
        rings: FeedRings,
        keys: tuple[str, ...],
        n_dense: int,
        config: FeedConfig,
        clock=time.time,
    ):
        self.rings = rings
        self.keys = keys
        self.n_dense = n_dense
        self.config = config
        self.clock = clock
        self.cache = SampleCache(
            SampleCacheConfig(config.label_window_s, config.max_pending, config.max_ready),
            clock=clock,
        )
        self.backlog: deque[tuple[SparseBatch, np.ndarray]] = deque()
        self.dropped_backlog = 0  # joined rows dropped before the trainer took them
        self.to_trainer = 0
        self._quality: list[tuple[np.ndarray, np.ndarray]] = []
        # labels read before their request
        self._carried: np.ndarray = np.zeros(0, dtype=_LABEL_RECORD)

    def poll(self, now: float | None = None) -> int:
        """Move what the rings held when called into the cache in time order, POLL_BYTES of
        each ring at a time (a trainer that was starved of cpu finds seconds of traffic there:
        read at once, they were a transient of ring-sized copies and per-record objects that
        malloc kept; a chunk is one block, its labels one numpy array), then the joined rows
        into the quality rows and the backlog. Returns the rows joined."""
        when = self.clock() if now is None else now
        joined = 0
        served_left, labels_left = self.rings.served.unread(), self.rings.labels.unread()
        while True:
            fresh = self.rings.labels.read(POLL_BYTES)
            labels = np.concatenate([self._carried, np.frombuffer(fresh, dtype=_LABEL_RECORD)])
            records = self.rings.served.read(POLL_BYTES)
            served_left -= len(records)
            labels_left -= len(fresh)
            # every label read so far has its request in the served ring; once that is read up
            # to its head, each one's request is in the cache
            caught_up = self.rings.served.unread() == 0
            self._carried = self._merge(labels, records, caught_up)
            joined += self._drain(when)
            if caught_up and self.rings.labels.unread() == 0:
                return joined
            if served_left <= 0 and labels_left <= 0:  # the rest came after the call
                return joined

    def _merge(self, labels: np.ndarray, records: bytes, caught_up: bool) -> np.ndarray:
        """Put the served records and the labels (_LABEL_RECORD) in time order into the cache;
        returns the labels newer than the last record, kept for the next chunk unless
        ``caught_up``."""
        i, rids, values_, times = 0, labels["rid"], labels["label"], labels["at"]
        served = _served_requests(len(self.keys), self.n_dense, records)
        for at, ids, values, offsets, dense, scores in served:
            while i < len(labels) and times[i] < at:
                self.cache.feedback(int(rids[i]), float(values_[i]), now=float(times[i]))
                i += 1
            stamps = np.full(len(ids), at)
            self.cache.put_arrays(self.keys, values, offsets, dense, stamps, ids, at, scores)
        if not caught_up:
            return labels[i:].copy()  # not a view of the chunk: it goes
        for j in range(i, len(labels)):
            self.cache.feedback(int(rids[j]), float(values_[j]), now=float(times[j]))
        return labels[:0]

    def _drain(self, now: float) -> int:
        joined = 0
        while True:
            rows = self.cache.take(self.config.batch_rows, now=now)
            if rows is None:
                return joined
            n = len(rows.batch)
            joined += n
            self._quality.append((rows.batch.labels.numpy(), rows.scores.astype(np.float64)))
            if self.config.train:
                self.backlog.append((rows.batch, rows.label_times.numpy()))
                while len(self.backlog) > self.config.backlog_batches or (
                    len(self.backlog) > 1 and self.backlog_nbytes() > self.config.backlog_bytes
                ):
                    self.dropped_backlog += len(self.backlog.popleft()[0])
            if n < self.config.batch_rows:
                return joined

    def nbytes(self) -> int:
        """Bytes the join holds: the sample cache's columns and the backlog (the trainer's
        memory account counts them)."""
        return self.cache.nbytes() + self.backlog_nbytes()

    def backlog_nbytes(self) -> int:
        """Bytes of the joined batches waiting for the trainer and their label times."""
        return sum(batch.nbytes + times.nbytes for batch, times in self.backlog)

    def next_batch(self) -> tuple[SparseBatch, np.ndarray] | None:
        if not self.backlog:
            return None
        batch = self.backlog.popleft()
        self.to_trainer += len(batch[0])
        return batch

    def report(self) -> FeedReport:
        """Counts so far and the (labels, scores) joined since the last report."""
        quality = self._quality
        self._quality = []
        labels = np.concatenate([q[0] for q in quality]) if quality else np.zeros(0, np.float32)
        scores = np.concatenate([q[1] for q in quality]) if quality else np.zeros(0)
        return FeedReport(
            counts=self.cache.counts.as_dict(),
            sizes={**self.cache.sizes(), "backlog_rows": sum(len(b) for b, _ in self.backlog)},
            dropped_backlog=self.dropped_backlog,
            to_trainer=self.to_trainer,
            labels=labels,
            scores=scores,
            join_bytes=self.cache.nbytes(),
        )
