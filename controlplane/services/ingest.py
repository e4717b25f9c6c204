"""Telemetry ingest: a validated batch is stored whole, once per (node, epoch, seq), then
broadcast. A sample resent with the same key and the same content is a duplicate; with other
content it is a conflict (409), never a silent drop."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane import events, status
from controlplane.models import Alert, Node, NodeEvent, TelemetrySample
from controlplane.services.alerts import resolve_alerts
from nodeworker.protocol import events as protocol_events
from nodeworker.protocol import telemetry as protocol_telemetry


class WrongNode(Exception):
    """The batch names another node than the token's."""


class Conflict(Exception):
    """Samples whose (node, epoch, seq) is stored with other content; nothing was stored."""

    def __init__(self, epoch: int, seqs: list[int]):
        super().__init__(
            f"{len(seqs)} sample(s) of epoch {epoch} are stored with other content: "
            f"seq {', '.join(map(str, seqs[:20]))}"
        )
        self.epoch, self.seqs = epoch, seqs


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicate: int
    events: int


def time_window() -> protocol_telemetry.TimeWindow:
    return protocol_telemetry.TimeWindow(
        max_age_s=float(settings.LIVEUPDATE_TELEMETRY_KEEP_S),
        max_skew_s=float(settings.LIVEUPDATE_TELEMETRY_MAX_SKEW_S),
    )


def content_hash(sample: dict) -> int:
    """64 bits of the sample's canonical JSON (a signed bigint)."""
    digest = hashlib.blake2b(orjson.dumps(sample, option=orjson.OPT_SORT_KEYS), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def _ts(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _row(node: Node, epoch: int, sample: dict, digest: int) -> TelemetrySample:
    return TelemetrySample(
        node=node,
        epoch=epoch,
        seq=sample["seq"],
        ts=_ts(sample["ts"]),
        throttle=sample["throttle"],
        tables=sample["tables"],
        cpu_per_core=sample["cpu_per_core"],
        content_hash=digest,
        **{name: sample.get(name) for name in TelemetrySample.METRICS},
    )


def _new_samples(node: Node, batch: protocol_telemetry.TelemetryBatch) -> list[tuple[dict, int]]:
    """(sample, hash) of the samples not stored yet; raises Conflict."""
    hashes = {s["seq"]: content_hash(s) for s in batch.samples}
    stored = dict(
        TelemetrySample.objects.filter(
            node=node, epoch=batch.epoch, seq__in=list(hashes)
        ).values_list("seq", "content_hash")
    )
    # A downsampled row (no hash) stands for samples folded into it: a resend is a duplicate.
    conflicts = sorted(seq for seq, h in stored.items() if h is not None and h != hashes[seq])
    if conflicts:
        raise Conflict(batch.epoch, conflicts)
    return [(s, hashes[s["seq"]]) for s in batch.samples if s["seq"] not in stored]


def ingest_batch(node: Node, payload) -> IngestResult:
    """Store the new samples of a batch and their events. Raises
    protocol_telemetry.TelemetryError (field errors; nothing stored), WrongNode or Conflict.
    Samples already stored count as duplicates."""
    named = payload.get("node") if isinstance(payload, dict) else None
    if isinstance(named, str) and named != node.name:
        raise WrongNode(f"This token belongs to node {node.name!r}, not {named!r}.")
    now = timezone.now()
    batch = protocol_telemetry.validate_batch(payload, now.timestamp(), time_window())
    with transaction.atomic():
        # One writer per node at a time, so "already stored" is exact, not a race.
        locked = Node.objects.select_for_update().get(pk=node.pk)
        new = _new_samples(node, batch)
        TelemetrySample.objects.bulk_create([_row(node, batch.epoch, s, h) for s, h in new])
        node_events = [
            NodeEvent(
                node=node,
                epoch=batch.epoch,
                seq=s["seq"],
                index=i,
                kind=e.kind,
                ts=_ts(e.ts),
                detail=e.detail,
            )
            for s, _ in new
            for i, e in enumerate(map(protocol_events.NodeEvent.from_wire, s["events"]))
        ]
        NodeEvent.objects.bulk_create(node_events)
        came_back = locked.status != Node.Status.ONLINE
        locked.last_seen, locked.status = now, Node.Status.ONLINE
        fields = ["last_seen", "status"]
        if batch.running is not None:  # compared with what it should run by services.desired
            locked.running_policy_version = batch.running.policy_version
            locked.running_checkpoint = batch.running.checkpoint or ""
            locked.running_reported_at = now
            fields += ["running_policy_version", "running_checkpoint", "running_reported_at"]
        locked.save(update_fields=fields)
        if came_back:
            resolve_alerts(locked, Alert.Kind.NODE_DOWN, now, "the node reported again")
            transaction.on_commit(
                lambda: status.broadcast(events.node_status(locked), node_name=locked.name)
            )
        if new:
            samples = [s for s, _ in new]
            transaction.on_commit(lambda: _broadcast(node.name, samples))
    return IngestResult(
        accepted=len(new), duplicate=len(batch.samples) - len(new), events=len(node_events)
    )


def _broadcast(node_name: str, new: list[dict]) -> None:
    newest = new[-1]  # the last received: "latest" is by receipt, not by the node's clock
    items: list[tuple[events.LiveMessage, str | None]] = [
        (events.telemetry(node_name, newest, len(new)), node_name)
    ]
    for sample in new:
        for event in map(protocol_events.NodeEvent.from_wire, sample["events"]):
            items.append((events.node_event(node_name, sample["seq"], event), node_name))
    status.broadcast_many(items)
