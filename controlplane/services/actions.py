"""Node actions: the declared operations with a role (nodeworker.protocol.operations), sent by
task name to the node's Celery queue, recorded with their outcome."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from controlplane import events, status
from controlplane.models import ModelCheckpoint, Node, NodeAction, Policy
from controlplane.services.policies import actor_of
from nodeworker import protocol
from nodeworker.protocol.operations import PLANE_ACTIONS, NodeOperationSpec

log = logging.getLogger(__name__)


class OperationArgumentsError(ValueError):
    """The caller's arguments do not fit the operation's declaration; ``fields``: why."""

    def __init__(self, fields: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in fields.items()))
        self.fields = fields


def _kwargs(
    spec: NodeOperationSpec, node: Node, checkpoint: ModelCheckpoint | None, given: dict
) -> dict:
    """The task's keyword arguments: the caller's (already checked against the declaration)
    and the ones the plane fills in (the node's policy, the chosen checkpoint)."""
    kwargs = dict(given)
    if "policy" in spec.argument_names:
        policy = node.policy
        if policy is None:
            raise ValueError("The node has no policy to apply.")
        clean, _ = protocol.validate_policy(policy.values())
        kwargs.update(policy=clean, policy_name=policy.name, version=policy.version)
    if "checkpoint" in spec.argument_names:
        if checkpoint is None:
            raise ValueError(f"{spec.name} needs a checkpoint.")
        kwargs["checkpoint"] = checkpoint.wire()
    return kwargs


def request_action(
    node: Node,
    action: str,
    *,
    user=None,
    actor: str | None = None,
    policy: Policy | None = None,
    checkpoint: ModelCheckpoint | None = None,
    arguments: dict | None = None,
) -> NodeAction:
    """Record the action, send its task to ``node.<name>`` and record that it was sent (or why
    it could not be). ``policy`` first assigns that policy to the node (apply_policy);
    ``arguments``: the ones a caller gives (``OperationArgumentsError`` when they do not fit
    the declaration)."""
    from controlplane.celery import app as celery_app

    spec = PLANE_ACTIONS.get(action)
    if spec is None:
        raise ValueError(f"unknown node action {action!r}")
    given, errors = spec.validate(arguments or {}, given_by="caller")
    if errors:
        raise OperationArgumentsError(errors)
    if policy is not None:
        node.policy = policy
        node.save(update_fields=["policy"])
    record = NodeAction.objects.create(
        node=node,
        action=action,
        kwargs=_kwargs(spec, node, checkpoint, given),
        actor=actor or actor_of(user),
        requested_by=user,
        checkpoint=checkpoint,
    )
    try:
        result = celery_app.send_task(
            spec.task,
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
        if "policy" in spec.argument_names:
            node.applied_policy_version = record.kwargs["version"]
            node.save(update_fields=["applied_policy_version"])
    status.broadcast(events.node_action(record), node_name=node.name)
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
