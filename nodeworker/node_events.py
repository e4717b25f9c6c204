"""The node's events waiting for the next telemetry batch (policy applied, snapshot taken or
restored, rebase, throttle changes, the trainer's rank changes and prunes)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from nodeworker.protocol.events import EventKind, NodeEvent

MAX_WAITING = 10_000  # the oldest are dropped while no reporter drains them


class NodeEvents:
    def __init__(self) -> None:
        self._waiting: deque[NodeEvent] = deque(maxlen=MAX_WAITING)

    def add(self, kind: EventKind, detail: dict[str, Any]) -> None:
        self._waiting.append(NodeEvent(kind, time.time(), detail))

    def extend(self, events: Iterable[NodeEvent]) -> None:
        """Events made elsewhere with their own time (the trainer's, the QoS controller's)."""
        self._waiting.extend(events)

    def drain(self) -> list[NodeEvent]:
        return [self._waiting.popleft() for _ in range(len(self._waiting))]

    def __iter__(self) -> Iterator[NodeEvent]:
        return iter(list(self._waiting))
