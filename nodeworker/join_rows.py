"""The rows the sample cache holds, as fixed-width records: a waiting row costs its data bytes.

Served rows are appended in serving order (request ids ascending) to a preallocated numpy array
of records (request id, served time, timestamp, served score, label, label time, state: free,
pending or ready; the dense row; per sparse feature its bag's start and length in that
feature's value arena). Rows leave in any order (a label, a timeout, the trainer taking them)
and are only marked free; when an append finds no room, the rows still held are squeezed to the
front of a new arena half as large again as they need (a squeeze is amortised over the appends
before the next one, and the arena shrinks again when traffic falls). A request id is found by
binary search over the ascending ids.

Before, every waiting row was a handful of Python objects (an OrderedDict entry, tuples, boxed
floats and ints, bag bounds as tuples): ~690 bytes a row against ~90 bytes of data, in malloc's
heap and pymalloc's arenas, which kept them after the rows left. ``nbytes`` is what the arenas
hold, allocated (every page of them is written before the next squeeze).
"""

from __future__ import annotations

import numpy as np

MIN_ROWS = 256  # the smallest columns (and value arenas), rows
FREE, PENDING, READY = 0, 1, 2


def room_for(needed: int) -> int:
    """Capacity of an arena that must hold ``needed``: half as much again, in whole MIN_ROWS
    (a squeeze costs what it keeps and comes after as many appends as half of that; the few
    sizes this gives are reused by malloc rather than scattered)."""
    return max(MIN_ROWS, -(-(needed + needed // 2) // MIN_ROWS) * MIN_ROWS)


def _bag_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Positions of the concatenated bags [start, start + length) of each row."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths
    return np.repeat(starts - first, lengths) + np.arange(total, dtype=np.int64)


class JoinRows:
    """Columns of served rows; positions [lo, hi) are held (some of them free)."""

    def __init__(self, n_features: int, n_dense: int) -> None:
        self.n_features, self.n_dense = n_features, n_dense
        self.lo = self.hi = 0
        self.vhi = [0] * n_features  # each value arena's used end
        # one fixed-width record a row: one allocation (an mmap past glibc's threshold, given
        # back whole at the next squeeze) instead of a column each on the heap
        self.dtype = np.dtype(
            [
                ("rid", np.int64),
                ("served", np.float64),  # non-decreasing
                ("stamp", np.float64),
                ("label_at", np.float64),
                ("score", np.float32),  # nan: not known
                ("label", np.float32),
                ("state", np.int8),
                ("dense", np.float32, (n_dense,)),
                ("vstart", np.int64, (n_features,)),
                ("vlen", np.int32, (n_features,)),
            ],
            align=True,
        )
        self._allocate(MIN_ROWS, [MIN_ROWS] * n_features)

    def _allocate(self, rows: int, values: list[int]) -> None:
        self.records = np.zeros(rows, dtype=self.dtype)
        fields = ("rid", "served", "stamp", "score", "label", "label_at", "state")
        self.rid, self.served, self.stamp, self.score, self.label, self.label_at, self.state = (
            self.records[name] for name in fields
        )
        self.dense, self.vstart, self.vlen = (self.records[n] for n in ("dense", "vstart", "vlen"))
        self.values = [np.zeros(n, dtype=np.int64) for n in values]

    @property
    def capacity(self) -> int:
        return len(self.records)

    def nbytes(self) -> int:
        """Bytes of the records and value arenas (allocated, used or not)."""
        return self.records.nbytes + sum(v.nbytes for v in self.values)

    def append(
        self,
        ids: np.ndarray,
        served: float,
        stamps: np.ndarray,
        scores: np.ndarray,
        dense: np.ndarray,
        values: tuple[np.ndarray, ...],
        offsets: tuple[np.ndarray, ...],
    ) -> tuple[int, int]:
        """Append pending rows; returns their positions [start, end) (a squeeze may move the
        rows held before: callers keep request ids, not positions, across appends)."""
        n = len(ids)
        counts = [len(v) for v in values]
        full = self.hi + n > self.capacity or any(
            used + k > len(arena)
            for used, k, arena in zip(self.vhi, counts, self.values, strict=True)
        )
        # traffic fell: an arena 4x what it holds is squeezed into one 1.5x (no flapping)
        idle = self.capacity > MIN_ROWS and 4 * (self.hi - self.lo + n) < self.capacity
        if full or idle:
            self._squeeze(n, counts)
        start, end = self.hi, self.hi + n
        self.rid[start:end] = ids
        self.served[start:end] = served
        self.stamp[start:end] = stamps
        self.score[start:end] = scores
        self.state[start:end] = PENDING
        self.dense[start:end] = dense
        for f, (vals, offs) in enumerate(zip(values, offsets, strict=True)):
            used = self.vhi[f]
            self.values[f][used : used + len(vals)] = vals
            self.vstart[start:end, f] = used + offs
            self.vlen[start:end, f] = np.diff(offs, append=len(vals))
            self.vhi[f] = used + len(vals)
        self.hi = end
        return start, end

    def _squeeze(self, n: int, counts: list[int]) -> None:
        """Move the rows held to the front of new columns with room for ``n`` more rows and
        ``counts`` more values per feature."""
        keep = np.flatnonzero(self.state[self.lo : self.hi] != FREE) + self.lo
        old_records, old_values = self.records, self.values
        bags = [_bag_index(self.vstart[keep, f], self.vlen[keep, f]) for f in range(len(counts))]
        self._allocate(
            room_for(len(keep) + n),
            [room_for(len(b) + k) for b, k in zip(bags, counts, strict=True)],
        )
        self.records[: len(keep)] = old_records[keep]
        for f, bag in enumerate(bags):
            self.values[f][: len(bag)] = old_values[f][bag]
            lengths = self.vlen[: len(keep), f]
            self.vstart[: len(keep), f] = np.cumsum(lengths) - lengths
            self.vhi[f] = len(bag)
        self.lo, self.hi = 0, len(keep)

    def find(self, rids: np.ndarray) -> np.ndarray:
        """Positions of these request ids among the held rows (-1 where not held)."""
        pos = np.searchsorted(self.rid[self.lo : self.hi], rids) + self.lo
        pos = np.minimum(pos, max(self.lo, self.hi - 1))
        found = (self.hi > self.lo) & (self.rid[pos] == rids) & (self.state[pos] != FREE)
        return np.where(found, pos, -1)

    def release(self, positions: np.ndarray) -> None:
        """Free rows; the held range starts again at the oldest row still held."""
        self.state[positions] = FREE
        if self.lo < self.hi and self.state[self.lo] != FREE:
            return
        held = np.flatnonzero(self.state[self.lo : self.hi] != FREE)
        self.lo = self.lo + int(held[0]) if len(held) else self.hi

    def gather(self, pos: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per feature, the rows' bags concatenated and their offsets."""
        values, offsets = [], []
        for f in range(self.n_features):
            lengths = self.vlen[pos, f].astype(np.int64)
            values.append(self.values[f][_bag_index(self.vstart[pos, f], lengths)])
            offsets.append(np.cumsum(lengths) - lengths)
        return values, offsets


class RidQueue:
    """A FIFO of request ids in a growable numpy ring (the rows ready for the trainer)."""

    def __init__(self) -> None:
        self._buf = np.zeros(MIN_ROWS, dtype=np.int64)
        self._head = 0
        self._count = 0

    def __len__(self) -> int:
        return self._count

    @property
    def nbytes(self) -> int:
        return self._buf.nbytes

    def _resize(self, capacity: int) -> None:
        held = self._buf[(self._head + np.arange(self._count)) % len(self._buf)]
        self._buf = np.zeros(capacity, dtype=np.int64)
        self._buf[: self._count] = held
        self._head = 0

    def push(self, rids: np.ndarray) -> None:
        if self._count + len(rids) > len(self._buf):
            self._resize(room_for(self._count + len(rids)))
        at = (self._head + self._count + np.arange(len(rids))) % len(self._buf)
        self._buf[at] = rids
        self._count += len(rids)

    def pop(self, k: int) -> np.ndarray:
        k = min(k, self._count)
        out = self._buf[(self._head + np.arange(k)) % len(self._buf)]
        self._head = (self._head + k) % len(self._buf)
        self._count -= k
        if len(self._buf) > MIN_ROWS and 8 * self._count < len(self._buf):
            self._resize(room_for(self._count))
        return out
