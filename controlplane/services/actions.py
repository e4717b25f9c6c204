"""Node actions: sent by name to the node's Celery queue, recorded with their outcome."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from controlplane import events, status
from controlplane.models import ModelCheckpoint, Node, NodeAction, Policy
from controlplane.services.policies import actor_of, node_overrides
from nodeworker import protocol

log = logging.getLogger(__name__)


def _kwargs(
    action: str, node: Node, checkpoint: ModelCheckpoint | None, reapply: bool
) -> dict[str, Any]:
    if action == "apply_policy":
        return {**_policy_to_apply(node, reapply), "overrides": node_overrides(node)}
    if action == "rebase":
        if checkpoint is None:
            raise ValueError("rebase needs a checkpoint.")
        return {"checkpoint": checkpoint.wire()}
    return {}


def _policy_to_apply(node: Node, reapply: bool) -> dict[str, Any]:
    """apply_policy's policy, policy_name and version: the node's policy as saved, or with
    ``reapply`` what was applied last (Node.applied_policy)."""
    if reapply:
        if node.applied_policy is None:
            raise ValueError("No policy was applied to the node yet.")
        return dict(node.applied_policy)
    policy = node.policy
    if policy is None:
        raise ValueError("The node has no policy to apply.")
    try:
        wire = policy.node_policy().wire()
    except ValidationError as exc:
        raise ValueError(f"The policy is not valid: {exc.messages}") from None
    return {"policy": wire, "policy_name": policy.name, "version": policy.version}


def _record_applied(node: Node, record: NodeAction, now: datetime) -> None:
    """The policy a sent apply_policy carried is the node's applied policy from now on."""
    kwargs = record.kwargs
    node.applied_policy = {k: kwargs[k] for k in ("policy", "policy_name", "version")}
    node.applied_policy_version = kwargs["version"]
    node.applied_at = now
    node.save(update_fields=["applied_policy", "applied_policy_version", "applied_at"])


def request_action(
    node: Node,
    action: str,
    *,
    user=None,
    actor: str | None = None,
    policy: Policy | None = None,
    checkpoint: ModelCheckpoint | None = None,
    reapply: bool = False,
    now: datetime | None = None,
) -> NodeAction:
    """Record the action, send its task to ``node.<name>`` and record that it was sent (or why
    it could not be). apply_policy sends the node's policy with its overrides: ``policy`` first
    assigns that policy to the node; ``reapply`` sends what was applied last instead (the
    watchdog and reconciliation: never an edit saved but not applied). ``now``: when a sent
    apply_policy takes effect for the watchdog (its own clock for its own changes)."""
    from controlplane.celery import app as celery_app

    if action not in protocol.NODE_ACTIONS:
        raise ValueError(f"unknown node action {action!r}")
    if policy is not None:
        node.policy = policy
        node.save(update_fields=["policy"])
    record = NodeAction.objects.create(
        node=node,
        action=action,
        kwargs=_kwargs(action, node, checkpoint, reapply),
        actor=actor or actor_of(user),
        requested_by=user,
        checkpoint=checkpoint,
    )
    try:
        result = celery_app.send_task(
            protocol.NODE_ACTIONS[action],
            kwargs=record.kwargs,
            queue=protocol.node_queue(node.name),
        )
    except Exception as exc:  # noqa: BLE001 - the broker's error is the outcome we record
        log.warning("sending %s to %s failed: %s", action, node.name, exc)
        record.state, record.error = NodeAction.State.FAILED, f"not sent: {exc}"
        record.finished_at = timezone.now()
        record.save(update_fields=["state", "error", "finished_at"])
    else:
        record.state, record.task_id = NodeAction.State.SENT, result.id
        record.sent_at = timezone.now()
        record.save(update_fields=["state", "task_id", "sent_at"])
        if action == "apply_policy":
            _record_applied(node, record, now or record.sent_at)
    # after the commit: a page reloading the node on this event must find what the action set
    transaction.on_commit(lambda: status.broadcast(events.node_action(record), node_name=node.name))
    return record


def refresh_action(record: NodeAction, now: datetime | None = None) -> NodeAction:
    """Look up the task's result in the result backend; a sent action with no result after
    LIVEUPDATE_ACTION_TIMEOUT_S is failed as timed out."""
    from controlplane.celery import app as celery_app

    if record.state != NodeAction.State.SENT:
        return record
    now = now or timezone.now()
    outcome = celery_app.AsyncResult(record.task_id)
    try:
        state = outcome.state
    except Exception as exc:  # noqa: BLE001 - result backend away: ask again on the next run
        log.warning("result of action %s unavailable: %s", record.pk, exc)
        return record
    if state == "SUCCESS":
        value = outcome.result
        record.state = NodeAction.State.SUCCEEDED
        record.result = value if isinstance(value, dict | list | str | int | float) else repr(value)
    elif state in ("FAILURE", "REVOKED"):
        record.state = NodeAction.State.FAILED
        record.error = f"{state.lower()}: {outcome.result!r}"[:2000]
    elif record.sent_at and now - record.sent_at > timedelta(
        seconds=settings.LIVEUPDATE_ACTION_TIMEOUT_S
    ):
        record.state = NodeAction.State.FAILED
        record.error = f"no result within {settings.LIVEUPDATE_ACTION_TIMEOUT_S} s"
    else:
        return record
    record.finished_at = now
    record.save(update_fields=["state", "result", "error", "finished_at"])
    status.broadcast(events.node_action(record), node_name=record.node.name)
    return record


def refresh_sent_actions(now: datetime | None = None) -> int:
    """Refresh every sent action; returns how many reached an outcome."""
    done = 0
    for record in NodeAction.objects.filter(state=NodeAction.State.SENT).select_related("node"):
        done += refresh_action(record, now).state != NodeAction.State.SENT
    return done
