"""The dashboard consumer in process (channels' communicator, in-memory layer): roles, node
subscriptions, and ingest that keeps working when the channel layer is down."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.test import override_settings
from rest_framework.test import APIClient

from controlplane.consumers import FleetConsumer
from controlplane.events import NodeStatusMessage, Pong
from controlplane.models import TelemetrySample
from controlplane.roles import ensure_groups
from controlplane.status import broadcast
from tests.integration.cp_support import INGEST, make_node, sample

IN_MEMORY = override_settings(
    CHANNEL_LAYERS={"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
)


def user_with(role: str | None):
    ensure_groups()
    user = get_user_model().objects.create_user(f"ws-{role}", password=None)
    if role:
        user.groups.add(Group.objects.get(name=role))
    return user


async def _session(user, script):
    communicator = WebsocketCommunicator(FleetConsumer.as_asgi(), "/ws/fleet/")
    communicator.scope["user"] = user
    connected, code = await communicator.connect()
    try:
        return connected, code, (await script(communicator) if connected else None)
    finally:
        await communicator.disconnect()


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_a_user_without_a_role_is_refused_with_4403():
    connected, code, _ = async_to_sync(_session)(user_with(None), None)
    assert (connected, code) == (False, 4403)


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_watching_nodes_switches_the_subscription():
    async def script(ws):
        replies = []
        for message in (
            {"action": "watch_node", "node": "edge-1"},
            {"action": "watch_node", "node": "edge-2"},
            {"action": "unwatch_node", "node": "edge-1"},
            {"action": "watch_node", "node": "Bad Name"},
            {"action": "watch_fleet"},
            {"action": "dance"},
        ):
            await ws.send_json_to(message)
            replies.append(await ws.receive_json_from(timeout=5))
        return replies

    connected, _, replies = async_to_sync(_session)(user_with("viewer"), script)
    assert connected
    assert replies == [
        {"type": "watching", "nodes": ["edge-1"], "fleet": False},
        {"type": "watching", "nodes": ["edge-1", "edge-2"], "fleet": False},
        {"type": "watching", "nodes": ["edge-2"], "fleet": False},
        {"type": "error", "detail": "invalid node name 'Bad Name'"},
        {"type": "watching", "nodes": [], "fleet": True},
        {"type": "error", "detail": "unknown action 'dance'"},
    ]


class BrokenLayer(InMemoryChannelLayer):
    async def group_send(self, group, message):
        raise ConnectionError("redis is down")


@pytest.mark.django_db
def test_ingest_stores_even_when_the_channel_layer_is_down(
    monkeypatch, caplog, django_capture_on_commit_callbacks
):
    monkeypatch.setattr("controlplane.status.get_channel_layer", lambda: BrokenLayer())
    _, token = make_node("edge-1")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {token}")
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        response = client.post(
            INGEST,
            json.dumps({"node": "edge-1", "samples": [sample(0)]}),
            content_type="application/json",
        )
    assert len(callbacks) == 2  # node_status (first report), then telemetry
    assert response.status_code == 200 and response.json()["accepted"] == 1
    assert TelemetrySample.objects.count() == 1
    assert "redis is down" in caplog.text
    broadcast(Pong(1))  # never raises


class RecordingLayer(InMemoryChannelLayer):
    def __init__(self):
        super().__init__()
        self.sent = []

    async def group_send(self, group, message):
        self.sent.append((group, message))


def test_broadcast_sends_to_node_groups_at_once_and_batches_the_fleet(monkeypatch):
    """In the web server (batching on) each event reaches its node's group immediately and the
    fleet group once, in order, in batch messages whose event counts leave no gap."""
    layer = RecordingLayer()
    monkeypatch.setattr("controlplane.status.get_channel_layer", lambda: layer)
    monkeypatch.setattr("controlplane.status._sender.batching", True)
    marker = uuid.uuid4().hex
    messages = [NodeStatusMessage(f"edge-{i % 2}", marker, float(i)) for i in range(6)]
    for message in messages:
        broadcast(message, node_name=message.node)
    sent = [message.to_json() for message in messages]
    node_messages = [(g, m) for g, m in layer.sent if g.startswith("node.")]
    assert [json.loads(t) for _, m in node_messages for t in m["texts"]] == sent
    assert [
        (g, m["n"] - node_messages[i % 2][1]["n"]) for i, (g, m) in enumerate(node_messages)
    ] == [(f"node.edge-{i % 2}", i // 2) for i in range(6)]

    def fleet_events() -> list[dict]:
        texts = [t for g, m in layer.sent if g == "fleet" for t in m["texts"]]
        return [e for e in map(json.loads, texts) if e.get("status") == marker]

    deadline = time.monotonic() + 5
    while len(fleet_events()) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert fleet_events() == sent
    fleet = [m for g, m in layer.sent if g == "fleet"]
    for before, after in zip(fleet, fleet[1:], strict=False):  # counts: no event skipped
        assert after["n"] == before["n"] + len(after["texts"])
    assert len(fleet) < len(sent)  # batched, not one message per event
    assert len({m["stream"] for _, m in layer.sent}) == 1


@IN_MEMORY
@pytest.mark.django_db(transaction=True)
def test_a_gap_in_the_counts_is_reported_as_resync_and_nothing_else_is_lost():
    """Messages the layer dropped (events 3 and 4 of stream A) show up as one resync; an
    interleaved second sender (stream B) is no gap; every message that arrived is forwarded."""

    async def script(ws):
        layer = get_channel_layer()
        for stream, n in (("A", 1), ("B", 7), ("A", 2), ("B", 8), ("A", 5), ("A", 6)):
            text = json.dumps({"kind": "telemetry", "stream": stream, "n": n})
            message = {"type": "fleet.event", "texts": [text], "group": "fleet"}
            await layer.group_send("fleet", message | {"stream": stream, "n": n})
        return [await ws.receive_json_from(timeout=5) for _ in range(7)]

    connected, _, received = async_to_sync(_session)(user_with("viewer"), script)
    assert connected
    assert [(e.get("stream"), e.get("n"), e["kind"]) for e in received] == [
        ("A", 1, "telemetry"),
        ("B", 7, "telemetry"),
        ("A", 2, "telemetry"),
        ("B", 8, "telemetry"),
        (None, None, "resync"),
        ("A", 5, "telemetry"),
        ("A", 6, "telemetry"),
    ]
    assert received[4] == {"kind": "resync", "missed": 2}
