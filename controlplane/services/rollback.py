"""Automatic rollback, run by the watchdog's beat task after the SLA watchdog
(controlplane.tasks.watchdog, with the watchdog's interval_means): a LiveUpdate
node whose policy sets ``rollback_after_intervals`` = N > 0 and whose AUC stayed under its
threshold in each of the last N watchdog intervals (LIVEUPDATE_SLA_INTERVAL_S wide) gets its
last good snapshot restored: the restore_snapshot action with ``name="last_good"`` and
``min_auc`` = the threshold, so the node picks the newest snapshot taken while its AUC was at
least that (else the bare base). The threshold of an interval is the higher of the policy's
auc_floor and the mean AUC of the baseline nodes (delta sync or frozen) in it; with neither,
nothing is judged. The action is audited (a NodeAction by "watchdog"), shown (the node reports
the restore as a snapshot event) and alerted (a rollback alert, resolved once the node's AUC is
back at its threshold). After a rollback the next judgement waits for N fresh intervals."""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction

from controlplane.models import Alert, Node, NodeAction, TelemetrySample
from controlplane.services.actions import request_action
from controlplane.services.alerts import raise_alert, resolve_alerts
from controlplane.services.policies import WATCHDOG, applied_policy
from controlplane.services.watchdog import interval_means

log = logging.getLogger(__name__)

BASELINE_MODES = ("delta_sync", "frozen")


def thresholds(floor: float | None, baseline: list[float | None]) -> list[float | None]:
    """Each interval's AUC threshold: the higher of the floor and the baseline's mean."""
    return [max((v for v in (floor, b) if v is not None), default=None) for b in baseline]


def below(means: list[float | None], limits: list[float | None]) -> bool:
    """True when the node's AUC was under the threshold in every interval."""
    return all(
        m is not None and t is not None and m < t for m, t in zip(means, limits, strict=True)
    )


def _auc_samples(node_ids: list[int], start: datetime, now: datetime) -> dict[int, list]:
    rows = TelemetrySample.objects.filter(
        node_id__in=node_ids, ts__gt=start, ts__lte=now, resolution_s=0, auc__isnull=False
    ).values_list("node_id", "ts", "auc")
    samples: dict[int, list] = defaultdict(list)
    for node_id, ts, auc in rows:
        samples[node_id].append((ts, auc))
    return samples


def _baseline_means(now: datetime, width: int, count: int) -> list[float | None]:
    """Per interval, the mean AUC over the samples of every node whose applied policy is a
    baseline mode."""
    start = now - timedelta(seconds=width * count)
    baselines = Node.objects.filter(applied_policy__policy__mode__in=BASELINE_MODES)
    ids = list(baselines.values_list("pk", flat=True))
    pooled = [s for samples in _auc_samples(ids, start, now).values() for s in samples]
    return interval_means(pooled, now, width, count)


def _last_rollback(node: Node) -> NodeAction | None:
    return (
        NodeAction.objects.filter(node=node, action="restore_snapshot", actor=WATCHDOG)
        .order_by("-created")
        .first()
    )


def check_node(node: Node, now: datetime) -> bool:
    """Judge one node on the intervals since its policy was applied; True when a rollback
    was requested."""
    policy = applied_policy(node)
    if policy is None or policy.mode != "liveupdate" or policy.rollback_after_intervals <= 0:
        return False
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, policy.rollback_after_intervals
    start = now - timedelta(seconds=width * count)
    means = interval_means(_auc_samples([node.pk], start, now)[node.pk], now, width, count)
    limits = thresholds(policy.auc_floor, _baseline_means(now, width, count))
    if means[-1] is not None and limits[-1] is not None and means[-1] >= limits[-1]:
        resolve_alerts(node, Alert.Kind.ROLLBACK, now, "AUC back at its threshold")
    last = _last_rollback(node)
    if (node.applied_at is not None and node.applied_at > start) or (
        last is not None and last.created > start
    ):
        return False  # judged only on intervals after the policy and the last rollback
    if not below(means, limits):
        return False
    threshold = round(float(limits[-1]), 6)  # type: ignore[arg-type]  # below(): not None
    reason = f"AUC {means[-1]:.4f} under {threshold:.4f} for {count} intervals of {width} s"
    action = request_action(
        node,
        "restore_snapshot",
        actor=WATCHDOG,
        arguments={"name": "last_good", "min_auc": threshold, "reason": reason},
    )
    raise_alert(
        node,
        Alert.Kind.ROLLBACK,
        Alert.Severity.WARNING,
        f"Rolled back to the last snapshot with AUC >= {threshold:.4f}: {reason}",
        {"auc_per_interval": means, "threshold_per_interval": limits, "action": action.pk},
        now,
    )
    return True


def run(now: datetime) -> list[str]:
    """Check every node that reports, by its applied policy; returns the nodes rolled back.
    Each node in a transaction of its own: one node's error is logged, the rest are checked."""
    rolled_back = []
    nodes = Node.objects.filter(status=Node.Status.ONLINE, applied_policy__isnull=False)
    for node in nodes:
        try:
            with transaction.atomic():
                if check_node(node, now):
                    rolled_back.append(node.name)
        except Exception:
            log.exception("automatic rollback: checking node %s failed", node.name)
    return rolled_back
