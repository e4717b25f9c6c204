"""Single-producer single-consumer byte rings in shared-memory files: the feed's two channels from
inference to the reading side (nodeworker/feed.py).

Each ring is a single-producer single-consumer byte ring in a file of the node's shared-memory
directory: an int64 header (head: bytes written, tail: bytes read) and the data. The writer
writes a record only into free space (behind the tail the reader published) and then advances
the head; the reader copies [tail, head) and only then advances the tail, so neither sees a
half-written record. (Ordered int64 stores and loads: x86-64 TSO, as in shared_memory.) A record
that does not fit is dropped and counted by the writer.

The creator allocates a ring's whole file at once. A sparse ring got its pages as the head first
went round: at the replayed 8 req/s x 8 rows the 32 MiB served ring and the 8 MiB label ring
took ~1.1 h to be touched once, so the node's /dev/shm grew 27.3 -> 40.0 MiB between the first
and second replayed hour (bench/node_replay.py, with and without a trainer alike) and then stayed
there: the node's memory after an hour was not its memory after a day. Allocated up front, the
rings' 40 MiB are there when the node is ready, and a full /dev/shm fails the node's start
instead of a later write into a hole of the mapping (SIGBUS).
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SERVED_RING_BYTES = 32 << 20  # ~1 KB per 8-row request: ~30 s at 1,300 req/s without a reader
LABEL_RING_BYTES = 8 << 20  # 32 bytes per label: ~22 s at 12k labels/s
_HEADER = 16  # head, tail (int64)
_LEN = struct.Struct("<q")


def record_bytes(payload: bytes) -> int:
    """Bytes a record of ``payload`` takes in a ring: its length, itself, padded to 8."""
    return -(-(8 + len(payload)) // 8) * 8


def record_spans(block: bytes) -> Iterator[tuple[int, int]]:
    """(offset, length) of each record's payload in a block ByteRing.read returned."""
    at = 0
    while at < len(block):
        (length,) = _LEN.unpack_from(block, at)
        yield at + 8, length
        at += -(-(8 + length) // 8) * 8


class ByteRing:
    """Single-producer single-consumer ring of byte records in a shared file."""

    def __init__(self, path: Path, capacity: int, create: bool):
        if capacity % 8:
            raise ValueError("ring capacity must be a multiple of 8")
        if create:
            with path.open("wb") as f:
                os.posix_fallocate(f.fileno(), 0, _HEADER + capacity)  # all of it now: see above
        with path.open("r+b") as f:
            self._map = mmap.mmap(f.fileno(), _HEADER + capacity)
        # a memoryview, not numpy: an item access is ~30 ns instead of ~100 (per label)
        self._header = memoryview(self._map)[:_HEADER].cast("q")
        self.capacity = capacity

    def write(self, payload: bytes) -> bool:
        """Append one record; False when the reader is too far behind (the record is dropped)."""
        padded = record_bytes(payload)
        head, tail = self._header[0], self._header[1]
        if head - tail + padded > self.capacity:
            return False
        self._put(head, _LEN.pack(len(payload)) + payload)
        self._header[0] = head + padded  # publishes the record
        return True

    def _put(self, at: int, data: bytes) -> None:
        pos = at % self.capacity
        first = min(len(data), self.capacity - pos)
        self._map[_HEADER + pos : _HEADER + pos + first] = data[:first]
        if first < len(data):
            self._map[_HEADER : _HEADER + len(data) - first] = data[first:]

    def read(self, max_bytes: int | None = None) -> bytes:
        """The records written since the last read, oldest first (reader side), as one block
        of length-prefixed, padded records (``record_spans`` finds them): all of them, or the
        first ones within ``max_bytes`` of the ring (at least one). One copy, no object a
        record: a reader that was starved of cpu reads seconds of traffic at once."""
        head, tail = self._header[0], self._header[1]
        if head == tail:
            return b""
        pos, n = tail % self.capacity, head - tail
        if max_bytes is not None:
            n = self._records_within(tail, n, max_bytes)
        first = min(n, self.capacity - pos)
        data = self._map[_HEADER + pos : _HEADER + pos + first]
        if first < n:
            data += self._map[_HEADER : _HEADER + n - first]
        self._header[1] = tail + n  # copied: the writer may reuse the space
        return data

    def _records_within(self, tail: int, available: int, max_bytes: int) -> int:
        """Bytes of the whole records from ``tail`` that fit ``max_bytes`` (at least one)."""
        taken = 0
        while taken < available:
            at = _HEADER + (tail + taken) % self.capacity  # a length never straddles the end
            (length,) = _LEN.unpack_from(self._map, at)
            size = -(-(8 + length) // 8) * 8  # _record_bytes of a payload of that length
            if taken and taken + size > max_bytes:
                break
            taken += size
        return taken

    def unread(self) -> int:
        """Bytes written and not yet read."""
        return self._header[0] - self._header[1]

    def close(self) -> None:
        self._header.release()
        self._map.close()


@dataclass
class FeedRings:
    served: ByteRing
    labels: ByteRing

    @classmethod
    def open(
        cls,
        directory: Path,
        create: bool,
        served_bytes: int = SERVED_RING_BYTES,
        label_bytes: int = LABEL_RING_BYTES,
    ) -> FeedRings:
        directory.mkdir(parents=True, exist_ok=True)
        return cls(
            ByteRing(directory / "feed-served.ring", served_bytes, create),
            ByteRing(directory / "feed-labels.ring", label_bytes, create),
        )

    def close(self) -> None:
        self.served.close()
        self.labels.close()
