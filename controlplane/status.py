"""The one place that pushes live events to dashboards (telemetry, rank events, alerts).

Each event is encoded to JSON once here, not once per socket. A node's group (its page) gets
each event at once. In the web server on Redis (controlplane.asgi turns batching on: the
in-memory layer of the embedded appliance is not thread-safe) the fleet group gets
the process's events of the last FLEET_BATCH_S in one group message: its cost in the channel
layer and in every consumer is per message, and a fleet of N nodes would otherwise send N
messages a second to every dashboard. Other processes (Celery, commands) send at once: they
raise few events and may exit right after.

Group messages carry a count per sending process and group ("stream"; "n": how many events it
has sent to the group, this message's included): the channel layer may drop messages
(channels_redis drops group messages for a server process whose queue is at capacity), and a
consumer that sees events skipped tells its dashboard to reload (controlplane.consumers), so no
loss is silent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import uuid

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

FLEET_GROUP = "fleet"
FLEET_BATCH_S = 0.1
log = logging.getLogger(__name__)


def node_group(node_name: str) -> str:
    return f"node.{node_name}"


def encode(event: dict) -> str:
    return json.dumps(event, separators=(",", ":"))


class _Sender:
    """This process's numbered group sends and its fleet batch (a forked child starts afresh)."""

    def __init__(self) -> None:
        self.send_lock = threading.Lock()  # counts reach the layer in order: a gap is a loss
        self.batch_lock = threading.Lock()
        self.batch_ready = threading.Condition(self.batch_lock)
        self.pid = -1
        self.stream = ""
        self.counts: dict[str, int] = {}
        self.fleet_batch: list[str] = []
        self.flusher: threading.Thread | None = None
        self.batching = False

    def _this_process(self) -> None:
        """Called under batch_lock: a new process gets its own stream (and flusher thread)."""
        if self.pid == os.getpid():
            return
        self.pid, self.stream, self.counts, self.fleet_batch = os.getpid(), uuid.uuid4().hex, {}, []
        self.flusher = None

    def add_to_fleet_batch(self, texts: list[str]) -> None:
        with self.batch_lock:
            self._this_process()
            if self.flusher is None:
                self.flusher = threading.Thread(target=self._flush_forever, daemon=True)
                self.flusher.start()
            self.fleet_batch += texts
            self.batch_ready.notify()

    def _flush_forever(self) -> None:
        loop = asyncio.new_event_loop()  # its own, kept: channels_redis pools connections per loop
        while True:
            with self.batch_lock:
                self.batch_ready.wait_for(lambda: self.fleet_batch)
            time.sleep(FLEET_BATCH_S)
            with self.batch_lock:
                texts, self.fleet_batch = self.fleet_batch, []
            with self.send_lock:
                try:
                    loop.run_until_complete(self._send_all([(FLEET_GROUP, texts)]))
                except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                    log.exception("fleet batch of %d events failed", len(texts))

    def send(self, messages: list[tuple[str, list[str]]]) -> None:
        """Send (group, event texts) pairs in one hop to the event loop."""
        with self.send_lock:
            async_to_sync(self._send_all)(messages)

    async def _send_all(self, messages: list[tuple[str, list[str]]]) -> None:
        """Live updates are best effort: a channel-layer outage is logged, never fails the
        caller (the data is already stored; the consumers see the gap in the numbers and the
        dashboard reloads)."""
        layer = get_channel_layer()
        for group, texts in messages:
            with self.batch_lock:
                self._this_process()
                self.counts[group] = n = self.counts.get(group, 0) + len(texts)
                stream = self.stream
            message = {"type": "fleet.event", "texts": texts, "group": group}
            try:
                await layer.group_send(group, message | {"stream": stream, "n": n})
            except Exception as exc:  # noqa: BLE001 - see docstring
                log.warning("broadcast of %d events to %s failed: %s", len(texts), group, exc)


_sender = _Sender()


def batch_fleet_events() -> None:
    """From now on this process sends fleet-group events in batches (the web server)."""
    _sender.batching = True


def broadcast(event: dict, *, node_name: str | None = None) -> None:
    """Send ``event`` to every dashboard watching the fleet (and the node's page, if named)."""
    broadcast_many([(event, node_name)])


def broadcast_many(items: list[tuple[dict, str | None]]) -> None:
    """Send several (event, node name) pairs: at once to the nodes' groups, to the fleet group
    at once or in the next batch."""
    texts = [(encode(event), node_name) for event, node_name in items]
    groups: dict[str, list[str]] = {}
    for text, node_name in texts:
        if node_name is not None:
            groups.setdefault(node_group(node_name), []).append(text)
    fleet = [text for text, _ in texts]
    if _sender.batching:
        _sender.add_to_fleet_batch(fleet)
    else:
        groups[FLEET_GROUP] = fleet
    if groups:
        _sender.send(list(groups.items()))
