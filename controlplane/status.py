"""The one place that pushes live events to dashboards (telemetry, rank events, alerts)."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

FLEET_GROUP = "fleet"
log = logging.getLogger(__name__)


def node_group(node_name: str) -> str:
    return f"node.{node_name}"


def broadcast(event: dict, *, node_name: str | None = None) -> None:
    """Send ``event`` to every dashboard watching the fleet (and the node's page, if named)."""
    broadcast_many([(event, node_name)])


def broadcast_many(items: list[tuple[dict, str | None]]) -> None:
    """Send several (event, node name) pairs in one hop to the event loop.
    Live updates are best effort: a channel-layer outage is logged, never fails the caller
    (the data is already stored and the dashboard reloads it)."""
    layer = get_channel_layer()

    async def send_all() -> None:
        for event, node_name in items:
            message = {"type": "fleet.event", "event": event}
            groups = [FLEET_GROUP] if node_name is None else [FLEET_GROUP, node_group(node_name)]
            for group in groups:
                try:
                    await layer.group_send(group, message)
                except Exception as exc:  # noqa: BLE001 - see docstring
                    log.warning("broadcast of %s to %s failed: %s", event.get("kind"), group, exc)

    async_to_sync(send_all)()
