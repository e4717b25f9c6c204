"""Saving policies with their history, and the watchdog's automatic QoS tightening and
relaxing."""

from __future__ import annotations

from django.db import transaction

from controlplane.models import Node, Policy, PolicyVersion
from nodeworker import protocol

# The watchdog halves max_trainer_duty on each SLA escalation, never below this floor.
MIN_TRAINER_DUTY = 0.05
WATCHDOG = "watchdog"  # the actor of the watchdog's policy versions


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


def revert_policy(policy: Policy, version: int, *, actor: str, user=None) -> PolicyVersion:
    """A new version of ``policy`` equal to its version ``version``'s values, recorded like any
    change (who, when, "reverted to vN"); applying it to nodes is a separate, audited action.
    PolicyVersion.DoesNotExist when the policy has no such version."""
    target = PolicyVersion.objects.get(policy=policy, version=version)
    for name in Policy.WIRE_FIELDS:
        if name in target.values:  # a version saved before a field existed keeps its value
            setattr(policy, name, target.values[name])
    return save_policy(policy, actor=actor, user=user, reason=f"reverted to v{version}")


def _unique_policy_name(base: str) -> str:
    name, n = base[:100], 2
    while Policy.objects.filter(name=name).exists():
        suffix = f"-{n}"
        name, n = base[: 100 - len(suffix)] + suffix, n + 1
    return name


def own_policy(node: Node, *, actor: str, reason: str) -> Policy:
    """The node's policy if no other node shares it; else a copy assigned to this node only, so
    a change made for one node (by the watchdog) does not silently reach the rest of the fleet."""
    current = node.policy
    if current is not None and not current.nodes.exclude(pk=node.pk).exists():
        return current
    values = current.values() if current is not None else dict(protocol.POLICY_DEFAULTS)
    origin = current.name if current is not None else "the defaults"
    fork = Policy(
        name=_unique_policy_name(f"{current.name if current else 'default'}-{node.name}"),
        description=f"Copy of {origin} for node {node.name}.",
        **values,
    )
    save_policy(fork, actor=actor, reason=f"copied from {origin} for {node.name}: {reason}")
    node.policy = fork
    node.save(update_fields=["policy"])
    return fork


def tighten_trainer_qos(node: Node, reason: str) -> PolicyVersion | None:
    """Halve the node's max_trainer_duty (bounded by MIN_TRAINER_DUTY) as a watchdog change.
    None when it is already at the floor."""
    policy = own_policy(node, actor=WATCHDOG, reason=reason)
    new_duty = max(MIN_TRAINER_DUTY, round(policy.max_trainer_duty / 2, 4))
    if new_duty >= policy.max_trainer_duty:
        return None
    policy.max_trainer_duty = new_duty
    return save_policy(policy, actor=WATCHDOG, reason=reason)


def operator_trainer_duty(policy: Policy) -> float:
    """max_trainer_duty as a person last set it: the watchdog's own versions are skipped, and a
    policy the watchdog copied for one node starts from the copied values."""
    versions = list(policy.versions.order_by("-version").values_list("actor", "values"))
    for actor, values in versions:
        if actor != WATCHDOG:
            return float(values["max_trainer_duty"])
    return float(versions[-1][1]["max_trainer_duty"]) if versions else policy.max_trainer_duty


def relax_trainer_qos(node: Node, reason: str) -> PolicyVersion | None:
    """Double the node's max_trainer_duty back towards what a person set (the watchdog's
    halvings undone one step at a time). None when nothing is left to give back."""
    policy = node.policy
    if policy is None:
        return None
    target = operator_trainer_duty(policy)
    if policy.max_trainer_duty >= target:
        return None
    policy.max_trainer_duty = min(target, round(policy.max_trainer_duty * 2, 4))
    return save_policy(policy, actor=WATCHDOG, reason=reason)
