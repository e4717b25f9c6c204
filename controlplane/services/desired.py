"""Desired state, reconciled (run by Celery beat every LIVEUPDATE_RECONCILE_S seconds).

The plane owns what each node should run: the policy version people applied to it last (with
the watchdog's overrides; a policy saved but not applied is not desired) and the checkpoint of
its newest rebase that was sent. A node reports what it runs in its telemetry batches
(protocol_telemetry.RunningState, stored on the node by ingest). For every online node whose report
differs, the missing action (apply_policy, rebase) is sent again, at most once per
LIVEUPDATE_RECONCILE_RESEND_S per action, so a node that restarted into its defaults gets its
policy and base back; each node in a transaction of its own."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane.models import ModelCheckpoint, Node, NodeAction
from controlplane.services.actions import request_action

log = logging.getLogger(__name__)

ACTOR = "reconcile"


def desired_checkpoint(node: Node) -> ModelCheckpoint | None:
    """The checkpoint of the node's newest rebase that reached its queue."""
    action = (
        NodeAction.objects.filter(
            node=node,
            action="rebase",
            checkpoint__isnull=False,
            state__in=[NodeAction.State.SENT, NodeAction.State.SUCCEEDED],
        )
        .select_related("checkpoint")
        .order_by("-created")
        .first()
    )
    return None if action is None else action.checkpoint


def _recently_requested(node: Node, action: str, now: datetime) -> bool:
    since = now - timedelta(seconds=settings.LIVEUPDATE_RECONCILE_RESEND_S)
    return NodeAction.objects.filter(node=node, action=action, created__gte=since).exists()


def _reconcile_node(node: Node, now: datetime) -> list[str]:
    sent = []
    applied = node.applied_policy
    if (
        applied is not None
        and node.running_policy_version != applied["version"]
        and not _recently_requested(node, "apply_policy", now)
    ):
        request_action(node, "apply_policy", actor=ACTOR, reapply=True)
        sent.append(f"{node.name}:apply_policy v{applied['version']}")
    checkpoint = desired_checkpoint(node)
    if (
        checkpoint is not None
        and node.running_checkpoint != checkpoint.checksum
        and not _recently_requested(node, "rebase", now)
    ):
        request_action(node, "rebase", actor=ACTOR, checkpoint=checkpoint)
        sent.append(f"{node.name}:rebase {checkpoint.name}")
    return sent


def reconcile(now: datetime | None = None) -> list[str]:
    """Re-send what each reporting node lacks; returns "<node>:<what>" for each action sent."""
    now = now or timezone.now()
    sent: list[str] = []
    reporting = Node.objects.filter(status=Node.Status.ONLINE, running_reported_at__isnull=False)
    for node in reporting:
        try:
            with transaction.atomic():
                sent += _reconcile_node(node, now)
        except Exception:
            log.exception("reconciling node %s failed", node.name)
    return sent
