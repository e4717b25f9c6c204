"""Dashboard websocket: authenticate, join the fleet group (and optionally a node's), forward."""

from channels.generic.websocket import AsyncJsonWebsocketConsumer

from controlplane.status import FLEET_GROUP, node_group


class FleetConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        user = self.scope.get("user")
        if user is None or not user.is_authenticated:
            await self.close(code=4401)
            return
        self.groups_joined = [FLEET_GROUP]
        await self.channel_layer.group_add(FLEET_GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for group in getattr(self, "groups_joined", []):
            await self.channel_layer.group_discard(group, self.channel_name)

    async def receive_json(self, content: dict, **kwargs) -> None:
        action = content.get("action")
        if action == "watch_node" and isinstance(content.get("node"), str):
            group = node_group(content["node"])
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_joined.append(group)
            await self.send_json({"type": "watching", "node": content["node"]})
        elif action == "ping":
            # Goes through the channel layer, so a reply proves the layer works end to end.
            await self.channel_layer.group_send(
                FLEET_GROUP,
                {"type": "fleet.event", "event": {"kind": "pong", "id": content.get("id")}},
            )
        else:
            await self.send_json({"type": "error", "detail": f"unknown action {action!r}"})

    async def fleet_event(self, message: dict) -> None:
        await self.send_json(message["event"])
