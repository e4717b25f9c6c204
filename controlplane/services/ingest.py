"""Telemetry ingest: a validated batch is stored whole, once per (node, seq), then broadcast."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import transaction
from django.utils import timezone

from controlplane import events, status
from controlplane.models import Alert, Node, NodeEvent, TelemetrySample
from controlplane.services.alerts import resolve_alerts
from nodeworker import protocol


class WrongNode(Exception):
    """The batch names another node than the token's."""


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicate: int
    events: int


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _row(node: Node, sample: dict) -> TelemetrySample:
    return TelemetrySample(
        node=node,
        seq=sample["seq"],
        ts=_ts(sample["ts"]),
        throttle=sample["throttle"],
        tables=sample.get("tables", {}),
        cpu_per_core=sample.get("cpu_per_core", []),
        **{name: sample.get(name) for name in TelemetrySample.METRICS},
    )


def ingest_batch(node: Node, payload) -> IngestResult:
    """Store the new samples of a batch and their events. Raises protocol.TelemetryError (field
    errors; nothing stored) or WrongNode. Samples already stored count as duplicates."""
    named = payload.get("node") if isinstance(payload, dict) else None
    if isinstance(named, str) and named != node.name:
        raise WrongNode(f"This token belongs to node {node.name!r}, not {named!r}.")
    samples = protocol.validate_batch(payload)
    now = timezone.now()
    with transaction.atomic():
        # One writer per node at a time, so "already stored" is exact, not a race.
        locked = Node.objects.select_for_update().get(pk=node.pk)
        seqs = [s["seq"] for s in samples]
        stored = set(
            TelemetrySample.objects.filter(node=node, seq__in=seqs).values_list("seq", flat=True)
        )
        new = [s for s in samples if s["seq"] not in stored]
        TelemetrySample.objects.bulk_create([_row(node, s) for s in new], ignore_conflicts=True)
        node_events = [
            NodeEvent(
                node=node,
                seq=s["seq"],
                index=i,
                kind=e["kind"],
                ts=_ts(e["ts"]),
                detail=e.get("detail", {}),
            )
            for s in new
            for i, e in enumerate(s.get("events", []))
        ]
        NodeEvent.objects.bulk_create(node_events, ignore_conflicts=True)
        came_back = locked.status != Node.Status.ONLINE
        locked.last_seen, locked.status = now, Node.Status.ONLINE
        locked.save(update_fields=["last_seen", "status"])
        if came_back:
            resolve_alerts(locked, Alert.Kind.NODE_DOWN, now, "the node reported again")
            transaction.on_commit(
                lambda: status.broadcast(events.node_status(locked), node_name=locked.name)
            )
        if new:
            transaction.on_commit(lambda: _broadcast(node.name, new))
    return IngestResult(
        accepted=len(new), duplicate=len(samples) - len(new), events=len(node_events)
    )


def _broadcast(node_name: str, new: list[dict]) -> None:
    newest = max(new, key=lambda s: s["seq"])
    items = [(events.telemetry(node_name, newest, len(new)), node_name)]
    for sample in new:
        for event in sample.get("events", []):
            items.append((events.node_event(node_name, sample["seq"], event), node_name))
    status.broadcast_many(items)
