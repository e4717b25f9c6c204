"""The one place that pushes live events to dashboards (telemetry, rank events, alerts)."""

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

FLEET_GROUP = "fleet"


def node_group(node_name: str) -> str:
    return f"node.{node_name}"


def broadcast(event: dict, *, node_name: str | None = None) -> None:
    """Send ``event`` to every dashboard watching the fleet (and the node's page, if named)."""
    layer = get_channel_layer()
    message = {"type": "fleet.event", "event": event}
    async_to_sync(layer.group_send)(FLEET_GROUP, message)
    if node_name is not None:
        async_to_sync(layer.group_send)(node_group(node_name), message)
