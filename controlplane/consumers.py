"""Dashboard websocket: authenticate, join the fleet group (or watched nodes' groups), forward.

A socket starts on the whole fleet. Client -> server:
  {"action": "watch_node", "node": NAME}    switch to that node's events (repeat for several)
  {"action": "unwatch_node", "node": NAME}  stop watching it (none left: back to the fleet)
  {"action": "watch_fleet"}                 back to every node's events
  {"action": "ping", "id": ...}             answered with {"kind": "pong", "id": ...}
Server -> client: the events of controlplane.events (telemetry, rank_event, node_event, alert,
node_status, node_action), {"type": "watching", ...}, {"type": "error", "detail": ...} and
{"kind": "resync", "missed": N} when N events never reached this socket (the channel layer
dropped them, see controlplane.status): the dashboard then reloads. See docs/ARCHITECTURE.md."""

import logging

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane.access import session_group, user_group
from controlplane.events import Pong, Resync
from controlplane.roles import role_level
from controlplane.status import FLEET_GROUP, encode, listen_for_relayed_events, node_group
from nodeworker.protocol import NODE_NAME_RE

log = logging.getLogger(__name__)


class FleetConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        if not await database_sync_to_async(role_level)(user):
            await self.close(code=4403)  # logged in, but no viewer role
            return
        self.groups_joined = [FLEET_GROUP]
        self.last_seen: dict[tuple[str, str], int] = {}  # (group, stream) -> events counted
        # controlplane.access closes the socket through these when the user's access ends
        session_key = getattr(self.scope.get("session"), "session_key", None)
        self.access_groups = [user_group(user.pk)]
        if session_key:
            self.access_groups.append(session_group(session_key))
        for group in [FLEET_GROUP, *self.access_groups]:
            await self.channel_layer.group_add(group, self.channel_name)
        await listen_for_relayed_events()  # the embedded web server, from its first page on
        await self.accept()

    async def disconnect(self, code: int) -> None:
        groups = getattr(self, "groups_joined", []) + getattr(self, "access_groups", [])
        for group in groups:
            await self.channel_layer.group_discard(group, self.channel_name)

    async def access_revoked(self, message: dict) -> None:
        await self.close(code=message["code"])

    async def _subscribe(self, groups: list[str]) -> None:
        for group in set(self.groups_joined) - set(groups):
            await self.channel_layer.group_discard(group, self.channel_name)
        for group in set(groups) - set(self.groups_joined):
            await self.channel_layer.group_add(group, self.channel_name)
        self.groups_joined = list(groups)
        self.last_seen = {key: n for key, n in self.last_seen.items() if key[0] in groups}

    async def receive_json(self, content: dict, **kwargs) -> None:
        action = content.get("action") if isinstance(content, dict) else None
        node = content.get("node") if isinstance(content, dict) else None
        nodes = [g.removeprefix("node.") for g in self.groups_joined if g != FLEET_GROUP]
        if action in ("watch_node", "unwatch_node"):
            if not isinstance(node, str) or not NODE_NAME_RE.match(node):
                await self.send_json({"type": "error", "detail": f"invalid node name {node!r}"})
                return
            if action == "watch_node":
                nodes = sorted({*nodes, node})
            else:
                nodes = [n for n in nodes if n != node]
            # Each event reaches a socket once: either the whole fleet or the watched nodes.
            await self._subscribe([node_group(n) for n in nodes] or [FLEET_GROUP])
            await self.send_json({"type": "watching", "nodes": nodes, "fleet": not nodes})
        elif action == "watch_fleet":
            await self._subscribe([FLEET_GROUP])
            await self.send_json({"type": "watching", "nodes": [], "fleet": True})
        elif action == "ping":
            # Through the channel layer to this socket, so a reply proves the layer works.
            await self.channel_layer.send(
                self.channel_name,
                {
                    "type": "fleet.event",
                    "texts": [encode(Pong(content.get("id")).to_json())],
                },
            )
        else:
            await self.send_json({"type": "error", "detail": f"unknown action {action!r}"})

    async def fleet_event(self, message: dict) -> None:
        if "stream" in message:  # see controlplane.status: n counts the sender's events
            key = (message["group"], message["stream"])
            previous = self.last_seen.get(key)
            self.last_seen[key] = message["n"]
            missed = message["n"] - len(message["texts"]) - (previous or 0)
            if previous is not None and missed > 0:
                log.warning("%s: %d events to %s were dropped", self.channel_name, missed, key[0])
                await self.send_json(Resync(missed).to_json())
        for text in message["texts"]:
            await self.send(text_data=text)
