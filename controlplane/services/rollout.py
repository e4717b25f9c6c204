"""Checkpoint roll-out: every node that is not down gets one rebase per pending checkpoint."""

from __future__ import annotations

from datetime import datetime

from django.utils import timezone

from controlplane.models import ModelCheckpoint, Node, NodeAction
from controlplane.services.actions import request_action


def request_rollout(checkpoint: ModelCheckpoint, now: datetime | None = None) -> None:
    checkpoint.rollout = ModelCheckpoint.Rollout.PENDING
    checkpoint.rollout_requested_at = now or timezone.now()
    checkpoint.rollout_completed_at = None
    checkpoint.save(update_fields=["rollout", "rollout_requested_at", "rollout_completed_at"])


def _delivered(checkpoint: ModelCheckpoint) -> list[int]:
    """Nodes this checkpoint was sent to: a send the broker refused (no task id) is retried on
    the next run; a rebase the node ran and failed is not (its action records why)."""
    rebases = NodeAction.objects.filter(checkpoint=checkpoint, action="rebase").exclude(task_id="")
    return list(rebases.values_list("node_id", flat=True))


def rollout_checkpoints(now: datetime | None = None) -> dict[str, list[str]]:
    """Send rebase to the nodes that have not been sent this checkpoint yet (a down node gets it
    when it is back); a checkpoint is done once every node has been sent it."""
    now = now or timezone.now()
    sent: dict[str, list[str]] = {}
    for checkpoint in ModelCheckpoint.objects.filter(rollout=ModelCheckpoint.Rollout.PENDING):
        for node in Node.objects.exclude(pk__in=_delivered(checkpoint)):
            if node.status == Node.Status.DOWN:
                continue
            request_action(node, "rebase", actor="rollout", checkpoint=checkpoint)
            sent.setdefault(checkpoint.name, []).append(node.name)
        if not Node.objects.exclude(pk__in=_delivered(checkpoint)).exists():
            checkpoint.rollout = ModelCheckpoint.Rollout.DONE
            checkpoint.rollout_completed_at = now
            checkpoint.save(update_fields=["rollout", "rollout_completed_at"])
    return sent
