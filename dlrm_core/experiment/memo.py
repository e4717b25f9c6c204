"""A small least-recently-used memo for the process: the pretrained base of a stream and seed.

Every run of an experiment's plan (each sweep point, each fleet shape) starts from the same
pretrained base for a given seed; a worker process that runs several of them trains it once.
The base model is never modified after pretraining (every strategy and the cluster copy it),
and the harness reseeds torch after pretraining, so a memoised base gives the same numbers as
a fresh one.
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
