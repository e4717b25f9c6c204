"""The one place that pushes live events to dashboards (telemetry, rank events, alerts).

Each event is encoded to JSON once here, not once per socket. Group messages are numbered per
sending process and group ("stream", "n"): the channel layer may drop messages (channels_redis
drops group messages for a server process whose queue is at capacity), and a consumer that sees
a number skipped tells its dashboard to reload (controlplane.consumers), so no loss is silent."""

from __future__ import annotations

import json
import logging
import os
import threading
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

FLEET_GROUP = "fleet"
log = logging.getLogger(__name__)


def node_group(node_name: str) -> str:
    return f"node.{node_name}"


def encode(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


class _Numbering:
    """Per-process message numbers. Sends are serialised so that numbers reach Redis in order
    (a gap then means a loss, not a reordering); a forked child starts its own stream."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pid = -1
        self.stream = ""
        self.counts: dict[str, int] = {}

    def next(self, group: str) -> tuple[str, int]:
        if self.pid != os.getpid():
            self.pid, self.stream, self.counts = os.getpid(), uuid.uuid4().hex[:12], {}
        self.counts[group] = self.counts.get(group, 0) + 1
        return self.stream, self.counts[group]


_numbering = _Numbering()


def broadcast(event: dict, *, node_name: str | None = None) -> None:
    """Send ``event`` to every dashboard watching the fleet (and the node's page, if named)."""
    broadcast_many([(event, node_name)])


def broadcast_many(items: list[tuple[dict, str | None]]) -> None:
    """Send several (event, node name) pairs in one hop to the event loop.
    Live updates are best effort: a channel-layer outage is logged, never fails the caller
    (the data is already stored; the consumers see the gap and the dashboard reloads)."""
    layer = get_channel_layer()
    encoded = [(encode(event), event.get("kind"), node_name) for event, node_name in items]

    async def send_all() -> None:
        for text, kind, node_name in encoded:
            groups = [FLEET_GROUP] if node_name is None else [FLEET_GROUP, node_group(node_name)]
            for group in groups:
                stream, n = _numbering.next(group)
                message = {"type": "fleet.event", "text": text, "group": group}
                message |= {"stream": stream, "n": n}
                try:
                    await layer.group_send(group, message)
                except Exception as exc:  # noqa: BLE001 - see docstring
                    log.warning("broadcast of %s to %s failed: %s", kind, group, exc)

    with _numbering.lock:
        async_to_sync(send_all)()
