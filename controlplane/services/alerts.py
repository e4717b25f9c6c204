"""Raising and resolving alerts: at most one open alert per (node, kind), each change broadcast."""

from __future__ import annotations

from datetime import datetime

from django.db import transaction

from controlplane import events, status
from controlplane.models import Alert, Node


def raise_alert(
    node: Node, kind: str, severity: str, message: str, details: dict, now: datetime
) -> tuple[Alert, bool]:
    """The open alert of this kind for the node (created if there was none), and whether new."""
    with transaction.atomic():
        alert, created = Alert.objects.select_for_update().get_or_create(
            node=node,
            kind=kind,
            resolved_at=None,
            defaults={
                "severity": severity,
                "message": message,
                "details": details,
                "raised_at": now,
            },
        )
        if not created:
            alert.message, alert.details = message, details
            alert.save(update_fields=["message", "details"])
    if created:
        status.broadcast(events.alert(alert), node_name=node.name)
    return alert, created


def resolve_alerts(node: Node, kind: str, now: datetime, why: str) -> int:
    resolved = 0
    for alert in Alert.objects.filter(node=node, kind=kind, resolved_at=None):
        alert.resolved_at = now
        alert.details = {**alert.details, "resolution": why}
        alert.save(update_fields=["resolved_at", "details"])
        status.broadcast(events.alert(alert), node_name=node.name)
        resolved += 1
    return resolved
