"""The embedded default's relay (controlplane.status): another process's broadcast reaches the
web server's in-memory channel layer through its Unix socket, numbered as it was sent; a
malformed message is refused without harming what follows."""

from __future__ import annotations

import asyncio
import json
import stat
import sys

import pytest
from channels.layers import get_channel_layer
from django.test import override_settings

from controlplane import status
from tests import services

SENDER = """
import django, sys
django.setup()
from controlplane import status
from controlplane.events import NodeStatusMessage
assert status.relays(), "the sender does not see the web server's relay socket"
status.broadcast(NodeStatusMessage("edge-1", "online", 1.0), node_name="edge-1")
status.broadcast(NodeStatusMessage("edge-1", "online", 2.0), node_name="edge-1")
"""


@pytest.fixture
def receiver(tmp_path, monkeypatch):
    """This test process as the embedded web server, on ``tmp_path``."""
    monkeypatch.setattr(status._Relay, "receiver", True)
    monkeypatch.setattr(status._Relay, "started", False)
    monkeypatch.setattr(status._Relay, "server", None)
    layers = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    with override_settings(REDIS_URL=None, DATA_DIR=tmp_path, CHANNEL_LAYERS=layers):
        yield tmp_path
    if status._Relay.server is not None:
        status._Relay.server.close()


async def _subscribed(*groups: str) -> tuple:
    layer = get_channel_layer()
    channel = await layer.new_channel()
    for group in groups:
        await layer.group_add(group, channel)
    return layer, channel


def test_a_broadcast_of_another_process_reaches_this_layer_in_order(receiver):
    async def scenario():
        layer, node_channel = await _subscribed("node.edge-1")
        _, fleet_channel = await _subscribed(status.FLEET_GROUP)
        await status.listen_for_relayed_events()
        await status.listen_for_relayed_events()  # a second page: still one server
        env = services.appliance_env(receiver, None, None)
        sender = await asyncio.create_subprocess_exec(sys.executable, "-c", SENDER, env=env)
        assert await asyncio.wait_for(sender.wait(), 60) == 0
        get = lambda ch: asyncio.wait_for(layer.receive(ch), 5)  # noqa: E731
        return [await get(node_channel), await get(node_channel), await get(fleet_channel)]

    first, second, fleet = asyncio.run(scenario())
    assert [json.loads(m["texts"][0])["last_seen"] for m in (first, second)] == [1.0, 2.0]
    assert (first["group"], first["n"], second["n"]) == ("node.edge-1", 1, 2)
    assert first["stream"] == second["stream"] == fleet["stream"]
    assert fleet["group"] == status.FLEET_GROUP
    mode = (receiver / status.RELAY_SOCKET).stat().st_mode
    assert stat.S_ISSOCK(mode) and stat.S_IMODE(mode) == 0o600


@pytest.mark.parametrize(
    "line",
    [
        b"not json",
        b'["fleet"]',
        b'{"group": "other", "texts": ["{}"], "stream": "s", "n": 1}',
        b'{"group": "node.Bad_Name", "texts": ["{}"], "stream": "s", "n": 1}',
        b'{"group": "node.", "texts": ["{}"], "stream": "s", "n": 1}',
        b'{"group": "fleet", "texts": [1], "stream": "s", "n": 1}',
        b'{"group": "fleet", "texts": ["{}", "{}"], "stream": "s", "n": 1}',
        b'{"group": "fleet", "texts": ["{}"], "stream": "", "n": 1}',
        b'{"group": "fleet", "texts": ["{}"], "stream": "s", "n": true}',
        b'{"group": "fleet", "texts": ["{}"], "stream": "s", "n": 1.0}',
    ],
)
def test_a_malformed_message_is_refused(line):
    assert status.parse_relayed(line) is None


def test_after_a_malformed_message_the_relay_still_delivers(receiver):
    good = {"group": "fleet", "texts": ['{"kind":"x"}'], "stream": "abc", "n": 1}

    async def scenario():
        layer, channel = await _subscribed(status.FLEET_GROUP)
        await status.listen_for_relayed_events()
        path = str(receiver / status.RELAY_SOCKET)
        reader, writer = await asyncio.open_unix_connection(path)
        after_bad = json.dumps(good | {"stream": "after-the-bad-line"}).encode()
        writer.write(b'{"group": "elsewhere"}\n' + after_bad + b"\n")
        closed = await asyncio.wait_for(reader.read(), 5)  # the relay hangs up at once
        writer.close()
        await asyncio.to_thread(status.relay_forward, [good])
        return closed, await asyncio.wait_for(layer.receive(channel), 5)

    closed, message = asyncio.run(scenario())
    assert closed == b""
    assert message == {"type": "fleet.event", **good}


def test_a_data_folder_too_deep_for_a_unix_socket_gets_a_private_folder(tmp_path):
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    with override_settings(DATA_DIR=deep):
        path = status.relay_socket_path()
        assert path == status.relay_socket_path()  # every process of this data folder agrees
    assert len(str(path)) <= status.MAX_SOCKET_PATH and deep not in path.parents
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    with override_settings(DATA_DIR=tmp_path / "other" / ("d" * 60) / ("e" * 60)):
        other = status.relay_socket_path()
    for folder in {path.parent, other.parent}:
        folder.rmdir()  # in the shared temporary directory: left clean
    assert other != path  # another data folder, another socket
