"""The event contracts: a node event of every kind survives the wire (the node's sample, ingest's
validation and cleaning, back to the dataclass), and every dashboard message keeps the JSON shape
the dashboard's JS reads."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest

from controlplane import events
from controlplane.models import Alert, Node, NodeAction
from nodeworker.node_events import NodeEvents
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.protocol.events import EVENT_KINDS, NodeEvent
from nodeworker.qos import Decision
from nodeworker.telemetry import NodeSnapshot

DETAILS = {
    "rank_change": {"table": "user", "from": 4, "to": 8, "reason": "energy"},
    "prune": {"table": "item", "from": 8, "to": 6, "reason": "lru"},
    "qos": {"action": "decrease", "duty": 0.5, "state": "throttled", "p99_ms": 12.5},
    "rebase": {"checkpoint": {"checksum": "sha256:" + "0" * 64}},
    "snapshot": {"snapshot": "snap-1", "digests": {"user": "ab"}},
    "policy": {"version": 3, "placement": {"inference_cpus": [0, 1]}},
    "sync": {"rows": 10, "bytes": 4096},
}


QUIET_SECOND = dict.fromkeys(
    ("qps", "p50_ms", "p95_ms", "p99_ms", "memory_overhead_bytes", "memory_overhead_pct"), 1.0
) | {"trainer_samples_per_s": 0.0, "trainer_duty": 0.0, "throttle": "running"}


def _snapshot(node_events: list[NodeEvent]) -> NodeSnapshot:
    return NodeSnapshot(**QUIET_SECOND, events=node_events)


def test_every_kind_has_a_detail_here():
    assert set(DETAILS) == set(EVENT_KINDS)


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_a_node_event_round_trips_through_a_validated_batch(kind):
    sent = NodeEvent(kind, time.time() - 1.5, DETAILS[kind])
    sample = _snapshot([sent]).to_sample(7, time.time())
    wire = json.loads(json.dumps({"node": "edge-1", "samples": [sample]}))  # as posted
    batch = protocol_telemetry.validate_batch(wire)
    (received,) = [NodeEvent.from_wire(e) for e in batch.samples[0]["events"]]
    assert received == sent
    assert wire["samples"][0]["events"] == [{"kind": kind, "ts": sent.ts, "detail": DETAILS[kind]}]


def test_an_event_without_detail_on_the_wire_reads_as_an_empty_one():
    assert NodeEvent.from_wire({"kind": "sync", "ts": 5}) == NodeEvent("sync", 5.0, {})


def test_the_node_cannot_make_an_event_ingest_would_refuse():
    with pytest.raises(ValueError, match="unknown node event kind 'reboot'"):
        NodeEvent("reboot", time.time(), {})  # type: ignore[arg-type]


def test_node_events_queue_typed_events_in_order_and_drain_once():
    queue = NodeEvents()
    queue.add("policy", {"version": 1})
    decision = Decision(time.time(), "pause", 0.4, 0.0, "paused", None, 3, "p99 over")
    queue.extend([decision.event()])
    drained = queue.drain()
    assert [(e.kind, e.detail.get("version"), e.detail.get("action")) for e in drained] == [
        ("policy", 1, None),
        ("qos", None, "pause"),
    ]
    assert drained[1].detail["p99_ms"] is None and queue.drain() == []


@pytest.mark.parametrize("kind", EVENT_KINDS)
def test_a_node_event_reaches_the_dashboard_in_its_json_shape(kind):
    message = events.node_event("edge-1", 9, NodeEvent(kind, 100.25, DETAILS[kind]))
    expected_kind = "rank_event" if kind == "rank_change" else "node_event"
    assert json.loads(json.dumps(message.to_json())) == {
        "kind": expected_kind,
        "node": "edge-1",
        "event": kind,
        "seq": 9,
        "ts": 100.25,
        "detail": DETAILS[kind],
    }
    assert list(message.to_json()) == ["kind", "node", "event", "seq", "ts", "detail"]


def test_the_telemetry_message_carries_the_sample_without_its_events():
    sample = _snapshot([NodeEvent("sync", 1.0, {})]).to_sample(3, 50.0)
    wire = events.telemetry("edge-1", sample, accepted=2).to_json()
    assert wire == {
        "kind": "telemetry",
        "node": "edge-1",
        "accepted": 2,
        "sample": {k: v for k, v in sample.items() if k != "events"},
    }
    assert "events" not in wire["sample"] and wire["sample"]["seq"] == 3


def test_alert_status_and_action_messages_keep_their_shape():
    node = Node(name="edge-2", status=Node.Status.DOWN, last_seen=datetime.fromtimestamp(10, UTC))
    raised = datetime.fromtimestamp(20, UTC)
    alert = Alert(pk=5, node=node, kind="node_down", severity="critical", message="down")
    alert.details, alert.raised_at = {"silent_s": 90}, raised
    assert events.alert(alert).to_json() == {
        "kind": "alert",
        "node": "edge-2",
        "alert": {
            "id": 5,
            "kind": "node_down",
            "severity": "critical",
            "message": "down",
            "details": {"silent_s": 90},
            "raised_at": 20.0,
            "resolved_at": None,
            "open": True,
        },
    }
    assert events.node_status(node).to_json() == {
        "kind": "node_status",
        "node": "edge-2",
        "status": "down",
        "last_seen": 10.0,
    }
    action = NodeAction(pk=8, node=node, action="pause", state="failed", actor="ops", error="x")
    assert events.node_action(action).to_json() == {
        "kind": "node_action",
        "node": "edge-2",
        "action": {"id": 8, "action": "pause", "state": "failed", "actor": "ops", "error": "x"},
    }


def test_socket_only_messages():
    assert events.Pong({"n": 1}).to_json() == {"kind": "pong", "id": {"n": 1}}
    assert events.Resync(4).to_json() == {"kind": "resync", "missed": 4}
