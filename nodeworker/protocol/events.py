"""A node's events on the wire: what happened on the node at a time (a rank change or prune of the
trainer, a QoS decision, a policy applied, a snapshot taken or restored, a rebase, a delta sync).
The node makes them (nodeworker.node_events, the QoS controller, the trainer process), sends them
inside a telemetry sample (``sample["events"]``) and the plane's ingest reads them back with
``from_wire`` after nodeworker.protocol.telemetry validated the batch. Stdlib only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

EventKind = Literal["rank_change", "prune", "qos", "rebase", "snapshot", "policy", "sync"]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
MAX_EVENTS_PER_SAMPLE = 100
MAX_DETAIL_DEPTH = 4  # an event's detail
MAX_DETAIL_BYTES = 4096  # an event's detail, encoded


@dataclass(frozen=True)
class NodeEvent:
    """``detail`` is a small JSON object of the kind's own fields (bounded on ingest)."""

    kind: EventKind
    ts: float  # Unix time on the node
    detail: dict[str, Any]

    def __post_init__(self) -> None:
        # Made on the node: an unknown kind would have ingest refuse the node's whole batch.
        if self.kind not in EVENT_KINDS:
            raise ValueError(f"unknown node event kind {self.kind!r}")

    def to_wire(self) -> dict[str, Any]:
        return {"kind": self.kind, "ts": self.ts, "detail": self.detail}

    @classmethod
    def from_wire(cls, value: dict[str, Any]) -> NodeEvent:
        """An event of a validated sample (``detail`` may be absent on the wire: empty)."""
        return cls(value["kind"], float(value["ts"]), value.get("detail", {}))
