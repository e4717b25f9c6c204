"""The JSON messages pushed to dashboards over the websocket (see docs/ARCHITECTURE.md), as frozen
dataclasses; ``to_json`` gives the wire object the dashboard's JS reads.

Every message has ``kind``; node messages also carry ``node`` (its name). They are sent to the
fleet group and to the node's group by controlplane.status.broadcast; ``pong`` and ``resync`` go
to one socket only (controlplane.consumers)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, ClassVar

from controlplane.models import Alert, Node, NodeAction
from nodeworker.protocol.events import NodeEvent


def _epoch(dt: datetime | None) -> float | None:
    return None if dt is None else dt.timestamp()


def _fields_json(value: Any) -> dict[str, Any]:
    """A dataclass's fields in their order, nested dataclasses as objects too."""
    return {
        f.name: _fields_json(v) if hasattr(v, "__dataclass_fields__") else v
        for f in fields(value)
        for v in (getattr(value, f.name),)
    }


class LiveMessage:
    """A message to dashboards: its ``KIND`` first, then its fields."""

    KIND: ClassVar[str]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.KIND, **_fields_json(self)}


@dataclass(frozen=True)
class TelemetryMessage(LiveMessage):
    """The newest sample of an accepted batch (``accepted`` samples were new in that batch)."""

    KIND: ClassVar[str] = "telemetry"
    node: str
    accepted: int
    sample: dict[str, Any]  # the sample's fields but its events (sent as NodeEventMessages)


@dataclass(frozen=True)
class NodeEventMessage(LiveMessage):
    """A node event other than a rank change (``event``: its NodeEvent kind)."""

    KIND: ClassVar[str] = "node_event"
    node: str
    event: str
    seq: int  # of the sample it came in
    ts: float
    detail: dict[str, Any]


@dataclass(frozen=True)
class RankEventMessage(NodeEventMessage):
    """A rank change: the node page's rank chart reads these."""

    KIND: ClassVar[str] = "rank_event"


@dataclass(frozen=True)
class AlertInfo:
    id: int
    kind: str
    severity: str
    message: str
    details: dict[str, Any]
    raised_at: float | None
    resolved_at: float | None
    open: bool


@dataclass(frozen=True)
class AlertMessage(LiveMessage):
    KIND: ClassVar[str] = "alert"
    node: str
    alert: AlertInfo


@dataclass(frozen=True)
class NodeStatusMessage(LiveMessage):
    KIND: ClassVar[str] = "node_status"
    node: str
    status: str
    last_seen: float | None


@dataclass(frozen=True)
class ActionInfo:
    id: int
    action: str
    state: str
    actor: str
    error: str


@dataclass(frozen=True)
class NodeActionMessage(LiveMessage):
    KIND: ClassVar[str] = "node_action"
    node: str
    action: ActionInfo


@dataclass(frozen=True)
class Pong(LiveMessage):
    """The answer to a socket's ping, through the channel layer (``id``: the ping's, as sent)."""

    KIND: ClassVar[str] = "pong"
    id: Any


@dataclass(frozen=True)
class Resync(LiveMessage):
    """``missed`` messages never reached this socket: the dashboard reloads what it shows."""

    KIND: ClassVar[str] = "resync"
    missed: int


def telemetry(node_name: str, sample: dict[str, Any], accepted: int) -> TelemetryMessage:
    fields_but_events = {k: v for k, v in sample.items() if k != "events"}
    return TelemetryMessage(node_name, accepted, fields_but_events)


def node_event(node_name: str, seq: int, event: NodeEvent) -> NodeEventMessage:
    kind = RankEventMessage if event.kind == "rank_change" else NodeEventMessage
    return kind(node_name, event.kind, seq, event.ts, event.detail)


def alert(item: Alert) -> AlertMessage:
    info = AlertInfo(
        item.pk,
        item.kind,
        item.severity,
        item.message,
        item.details,
        _epoch(item.raised_at),
        _epoch(item.resolved_at),
        item.is_open,
    )
    return AlertMessage(item.node.name, info)


def node_status(node: Node) -> NodeStatusMessage:
    return NodeStatusMessage(node.name, node.status, _epoch(node.last_seen))


def node_action(action: NodeAction) -> NodeActionMessage:
    info = ActionInfo(action.pk, action.action, action.state, action.actor, action.error)
    return NodeActionMessage(action.node.name, info)
