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
loss is silent.

The embedded default's layer is in memory: it reaches only the websockets of the web server's
own process, while the Celery worker (watchdog alerts, action results, policy applies) and the
CLI run in processes of their own. There the web server listens on a Unix socket beside the
embedded database (its owner's only: the file's permissions are the authentication) and puts
each numbered group message other processes send it into its layer ("relay" below). With
REDIS_URL the layer is shared already and nothing is relayed. Relay wire format: one JSON group
message per line, {"group", "texts", "stream", "n"}."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings

from controlplane.events import LiveMessage
from nodeworker.protocol import NODE_NAME_RE

FLEET_GROUP = "fleet"
FLEET_BATCH_S = 0.1
RELAY_SOCKET = "live-events.sock"
RELAY_MAX_LINE = 1 << 20  # a group message holds a few events of at most a few KiB each
RELAY_TIMEOUT_S = 1.0
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux, 104 on macOS
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
                    numbered = self._number([(FLEET_GROUP, texts)])
                    loop.run_until_complete(self._send_all(numbered))
                except Exception:  # noqa: BLE001 - the thread must outlive any one batch
                    log.exception("fleet batch of %d events failed", len(texts))

    def send(self, messages: list[tuple[str, list[str]]]) -> None:
        """Send (group, event texts) pairs: to the web server's relay socket, or to the channel
        layer in one hop to the event loop."""
        with self.send_lock:
            numbered = self._number(messages)
            if relays():
                relay_forward(numbered)
            else:
                async_to_sync(self._send_all)(numbered)

    def _number(self, messages: list[tuple[str, list[str]]]) -> list[dict]:
        numbered = []
        with self.batch_lock:
            self._this_process()
            for group, texts in messages:
                self.counts[group] = n = self.counts.get(group, 0) + len(texts)
                message = {"type": "fleet.event", "texts": texts, "group": group}
                numbered.append(message | {"stream": self.stream, "n": n})
        return numbered

    async def _send_all(self, messages: list[dict]) -> None:
        """Live updates are best effort: a channel-layer outage is logged, never fails the
        caller (the data is already stored; the consumers see the gap in the numbers and the
        dashboard reloads)."""
        layer = get_channel_layer()
        for message in messages:
            try:
                await layer.group_send(message["group"], message)
            except Exception as exc:  # noqa: BLE001 - see docstring
                n, group = len(message["texts"]), message["group"]
                log.warning("broadcast of %d events to %s failed: %s", n, group, exc)


_sender = _Sender()


def batch_fleet_events() -> None:
    """From now on this process sends fleet-group events in batches (the web server)."""
    _sender.batching = True


def broadcast(message: LiveMessage, *, node_name: str | None = None) -> None:
    """Send ``message`` to every dashboard watching the fleet (and the node's page, if named)."""
    broadcast_many([(message, node_name)])


def broadcast_many(items: list[tuple[LiveMessage, str | None]]) -> None:
    """Send several (message, node name) pairs: at once to the nodes' groups, to the fleet group
    at once or in the next batch."""
    texts = [(encode(message.to_json()), node_name) for message, node_name in items]
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


class _Relay:
    receiver = False  # this process is the embedded default's web server (controlplane.asgi)
    started = False  # set before the first await: two sockets connecting at once start it once
    server: asyncio.AbstractServer | None = None  # kept: the server lives as long as the process


def relay_socket_path() -> Path:
    """The relay's socket: in the data folder, or (a path too long for a Unix socket) in a
    private folder of the temporary directory named after the data folder."""
    path = Path(settings.DATA_DIR) / RELAY_SOCKET
    if len(os.fsencode(path)) <= MAX_SOCKET_PATH:
        return path
    digest = hashlib.sha256(os.fsencode(settings.DATA_DIR)).hexdigest()[:16]
    folder = Path(tempfile.gettempdir()) / f"liveupdate-{os.getuid()}-{digest}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.stat().st_uid != os.getuid() or folder.stat().st_mode & 0o077:
        raise PermissionError(f"{folder} is not a private folder of this user")
    return folder / RELAY_SOCKET


def receive_relayed_events() -> None:
    """This process is the embedded web server: other processes' events come to it (it listens
    from its first websocket on: before that no page is open)."""
    _Relay.receiver = True


def relays() -> bool:
    """Whether this process's events go to the web server's relay socket: the embedded default,
    not the web server itself, and a web server has listened on this data folder."""
    return not settings.REDIS_URL and not _Relay.receiver and relay_socket_path().exists()


def relay_forward(messages: list[dict]) -> None:
    """Best effort, as every live update: the data is stored already, and a web server that is
    not running has no page open."""
    lines = b"".join(encode(m).encode() + b"\n" for m in messages)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(RELAY_TIMEOUT_S)
            sock.connect(str(relay_socket_path()))
            sock.sendall(lines)
    except OSError as exc:
        log.warning("relaying %d live messages to the web server failed: %s", len(messages), exc)


async def listen_for_relayed_events() -> None:
    """Start the relay socket once, on the server's event loop (the in-memory layer's queues
    belong to it). Called by each new dashboard socket; does nothing but in the receiver."""
    if not _Relay.receiver or _Relay.started or settings.REDIS_URL:
        return
    _Relay.started = True
    try:
        path = relay_socket_path()
        path.unlink(missing_ok=True)  # left by a server that was killed
        server = await asyncio.start_unix_server(_relayed, path=str(path), limit=RELAY_MAX_LINE)
        path.chmod(0o600)
    except OSError:  # the pages still work, with this process's own events only
        log.exception("the relay socket for other processes' live events could not be opened")
        _Relay.started = False
        return
    _Relay.server = server


def parse_relayed(line: bytes) -> dict | None:
    """A relayed group message, checked (None: not one)."""
    try:
        m = json.loads(line)
    except ValueError:
        return None
    if not isinstance(m, dict):
        return None
    group, texts, stream, n = (m.get(k) for k in ("group", "texts", "stream", "n"))
    node = group.removeprefix("node.") if isinstance(group, str) else ""
    ok = (
        (group == FLEET_GROUP or (node != group and NODE_NAME_RE.match(node) is not None))
        and isinstance(texts, list)
        and all(isinstance(t, str) for t in texts)
        and isinstance(stream, str)
        and 0 < len(stream) <= 64
        and type(n) is int
        and len(texts) <= n < 2**62
    )
    if not ok:
        return None
    return {"type": "fleet.event", "texts": texts, "group": group, "stream": stream, "n": n}


async def _relayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    layer = get_channel_layer()
    try:
        while line := await reader.readline():
            message = parse_relayed(line)
            if message is None:
                log.warning("relay: closed a connection that sent a malformed message")
                return
            await layer.group_send(message["group"], message)
    except (ValueError, ConnectionError) as exc:  # a line over the limit, a reset peer
        log.warning("relay: connection dropped: %s", exc)
    finally:
        writer.close()
