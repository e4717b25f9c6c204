"""A small least-recently-used memo for the process: what the runs of a plan would otherwise
each build again in a worker process (the pretrained base of a stream and seed, the re-timed
stream, the routers of a fleet shape; see pretrain.py, stream.py, fleet.py). A memoised value
must never be modified by its users.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class Memo(Generic[V]):
    def __init__(self, capacity: int) -> None:
        if not 1 <= capacity <= 1024:
            raise ValueError(f"capacity must be in [1, 1024], got {capacity}")
        self.capacity = capacity
        self.entries: OrderedDict[Hashable, V] = OrderedDict()
        self.hits = 0

    def get(self, key: Hashable, compute: Callable[[], V]) -> V:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        value = compute()
        self.entries[key] = value
        if len(self.entries) > self.capacity:
            self.entries.popitem(last=False)
        return value
