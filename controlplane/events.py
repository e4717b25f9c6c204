"""The JSON events pushed to dashboards over the websocket (see docs/ARCHITECTURE.md).

Every event has ``kind``; node events also carry ``node`` (its name). They are sent to the fleet
group and to the node's group by controlplane.status.broadcast."""

from __future__ import annotations

from controlplane.models import Alert, Node, NodeAction


def _epoch(dt) -> float | None:
    return None if dt is None else dt.timestamp()


def telemetry(node_name: str, sample: dict, accepted: int) -> dict:
    """The newest sample of an accepted batch (``accepted`` samples were new in that batch)."""
    fields = {k: v for k, v in sample.items() if k != "events"}
    return {"kind": "telemetry", "node": node_name, "accepted": accepted, "sample": fields}


def node_event(node_name: str, seq: int, event: dict) -> dict:
    """A rank change (kind "rank_event") or another node event (kind "node_event")."""
    kind = "rank_event" if event["kind"] == "rank_change" else "node_event"
    return {
        "kind": kind,
        "node": node_name,
        "event": event["kind"],
        "seq": seq,
        "ts": event["ts"],
        "detail": event.get("detail", {}),
    }


def alert(item: Alert) -> dict:
    return {
        "kind": "alert",
        "node": item.node.name,
        "alert": {
            "id": item.pk,
            "kind": item.kind,
            "severity": item.severity,
            "message": item.message,
            "details": item.details,
            "raised_at": _epoch(item.raised_at),
            "resolved_at": _epoch(item.resolved_at),
            "open": item.is_open,
        },
    }


def node_status(node: Node) -> dict:
    return {
        "kind": "node_status",
        "node": node.name,
        "status": node.status,
        "last_seen": _epoch(node.last_seen),
    }


def node_action(action: NodeAction) -> dict:
    return {
        "kind": "node_action",
        "node": action.node.name,
        "action": {
            "id": action.pk,
            "action": action.action,
            "state": action.state,
            "actor": action.actor,
            "error": action.error,
        },
    }
