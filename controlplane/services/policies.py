"""Saving policies with their history; the policy applied to a node; the watchdog's automatic
overrides of it (controlplane.overrides), which never change the policy people set."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from controlplane.models import Node, Policy, PolicyVersion
from controlplane.overrides import PolicyOverride
from nodeworker import protocol

# The watchdog halves max_trainer_duty on each SLA escalation, never below this floor.
MIN_TRAINER_DUTY = 0.05
WATCHDOG = "watchdog"  # the actor of the watchdog's overrides and node actions


def actor_of(user) -> str:
    return f"user:{user.get_username()}" if user is not None else "system"


def save_policy(policy: Policy, *, actor: str, user=None, reason: str = "") -> PolicyVersion:
    """Validate, bump the version and record who changed what and why, in one transaction."""
    policy.full_clean(validate_unique=policy.pk is None)
    with transaction.atomic():
        previous = (
            PolicyVersion.objects.filter(policy_id=policy.pk).order_by("-version").first()
            if policy.pk
            else None
        )
        before = previous.values if previous else {}
        values = policy.values()
        changes = {k: [before.get(k), v] for k, v in values.items() if before.get(k) != v}
        if previous is not None and not changes and policy.version == previous.version:
            policy.save()  # name/description only: no new wire version
            return previous
        policy.version = (previous.version if previous else 0) + 1
        policy.save()
        return PolicyVersion.objects.create(
            policy=policy,
            version=policy.version,
            values=values,
            changes=changes,
            actor=actor,
            user=user,
            reason=reason,
        )


def applied_policy(node: Node) -> protocol.Policy | None:
    """The policy people applied to the node last (None: nothing yet); a policy saved since
    but not applied is not it."""
    if node.applied_policy is None:
        return None
    policy, _ = protocol.validate_policy(node.applied_policy["policy"])
    return policy


def node_overrides(node: Node) -> dict[str, float]:
    """The node's automatic overrides as apply_policy sends them (protocol.validate_overrides)."""
    return {o.field: o.value for o in PolicyOverride.objects.filter(node=node)}


@dataclass(frozen=True)
class OverrideChange:
    """One step of the watchdog's override of a node's field; ``new`` None: lifted."""

    node: str
    field: str
    old: float | None  # None: there was no override
    new: float | None

    def __str__(self) -> str:
        old = "policy" if self.old is None else f"{self.old:g}"
        new = "policy" if self.new is None else f"{self.new:g}"
        return f"{self.node}:{self.field} {old} -> {new}"


def tighten_trainer_qos(
    node: Node, applied: protocol.Policy, reason: str, now: datetime
) -> OverrideChange | None:
    """Halve the duty in force (never below MIN_TRAINER_DUTY) as the watchdog's override,
    good until LIVEUPDATE_OVERRIDE_TTL_S from now. None when it is already at the floor."""
    field = "max_trainer_duty"
    override = PolicyOverride.objects.filter(node=node, field=field).first()
    in_force = applied.with_overrides(node_overrides(node)).max_trainer_duty
    duty = max(MIN_TRAINER_DUTY, round(in_force / 2, 4))
    if duty >= in_force:
        return None
    expires = now + timedelta(seconds=settings.LIVEUPDATE_OVERRIDE_TTL_S)
    if override is None:
        PolicyOverride.objects.create(
            node=node, field=field, value=duty, reason=reason, since=now, expires_at=expires
        )
        return OverrideChange(node.name, field, None, duty)
    old = override.value
    override.value, override.reason, override.expires_at = duty, reason, expires
    override.save(update_fields=["value", "reason", "expires_at"])
    return OverrideChange(node.name, field, old, duty)


def relax_trainer_qos(node: Node, applied: protocol.Policy, reason: str) -> OverrideChange | None:
    """Double the watchdog's duty override back; lifted once it reaches the applied policy's
    value. None when there is no override."""
    field = "max_trainer_duty"
    override = PolicyOverride.objects.filter(node=node, field=field).first()
    if override is None:
        return None
    duty = round(override.value * 2, 4)
    if duty >= applied.max_trainer_duty:
        override.delete()
        return OverrideChange(node.name, field, override.value, None)
    old = override.value
    override.value, override.reason = duty, reason
    override.save(update_fields=["value", "reason"])
    return OverrideChange(node.name, field, old, duty)


def drop_expired_overrides(node: Node, now: datetime) -> list[OverrideChange]:
    expired = list(PolicyOverride.objects.filter(node=node, expires_at__lte=now))
    for override in expired:
        override.delete()
    return [OverrideChange(node.name, o.field, o.value, None) for o in expired]
