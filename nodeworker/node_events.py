"""The node's events waiting for the next telemetry batch (policy applied, snapshot taken or
restored, rebase, throttle changes, the trainer's rank changes and prunes)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

MAX_WAITING = 10_000  # the oldest are dropped while no reporter drains them


class NodeEvents:
    def __init__(self) -> None:
        self._waiting: deque[dict[str, Any]] = deque(maxlen=MAX_WAITING)

    def add(self, kind: str, detail: dict[str, Any]) -> None:
        self._waiting.append({"kind": kind, "ts": time.time(), "detail": detail})

    def extend(self, events: Iterable[dict[str, Any]]) -> None:
        """Events made elsewhere with their own time (the trainer's, the QoS controller's)."""
        self._waiting.extend(events)

    def drain(self) -> list[dict[str, Any]]:
        return [self._waiting.popleft() for _ in range(len(self._waiting))]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(list(self._waiting))
