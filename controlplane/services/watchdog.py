"""The SLA watchdog, run by Celery beat every LIVEUPDATE_SLA_INTERVAL_S seconds.

- P99 over the node's SLA in each of the last N intervals (N = LIVEUPDATE_SLA_INTERVALS, each
  interval's P99 = the mean of its samples' p99_ms): an sla_violation alert, and the node's
  max_trainer_duty is halved (recorded as a policy version by "watchdog") and applied. While the
  breach lasts it is halved again every N intervals, down to MIN_TRAINER_DUTY. Resolved when the
  newest interval is within the SLA again. Once P99 has been within the SLA in each of the last
  N intervals, the duty is doubled back every N intervals until it reaches what a person last
  set (recorded and applied the same way), so a passing spike does not starve the trainer.
- AUC under the policy's auc_floor in each of the last N intervals: an auc_drop alert.
- A node silent for longer than LIVEUPDATE_NODE_DOWN_S: status down and a node_down alert
  (resolved by the ingest path when the node reports again).
The verdicts are computed from stored telemetry, so the watchdog keeps no state of its own.
Each node is checked in a transaction of its own: an error with one node's data is logged and
reported, and every other node is still checked."""

from __future__ import annotations

import functools
import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane import events, status
from controlplane.models import Alert, Node, TelemetrySample
from controlplane.services.actions import request_action
from controlplane.services.alerts import raise_alert, resolve_alerts
from controlplane.services.policies import WATCHDOG, relax_trainer_qos, tighten_trainer_qos
from nodeworker import protocol

log = logging.getLogger(__name__)


@dataclass
class WatchdogReport:
    raised: list[str] = field(default_factory=list)  # "<node>:<kind>"
    resolved: list[str] = field(default_factory=list)
    tightened: list[str] = field(default_factory=list)  # "<node>:<policy> v<version>"
    relaxed: list[str] = field(default_factory=list)  # "<node>:<policy> v<version>"
    failed: list[str] = field(default_factory=list)  # nodes whose check raised (logged)


def interval_means(
    samples: list[tuple[datetime, float]], now: datetime, width_s: int, count: int
) -> list[float | None]:
    """Mean value in each of the ``count`` intervals ending at ``now``, oldest first (None: no
    sample in that interval)."""
    sums, ns = [0.0] * count, [0] * count
    start = now - timedelta(seconds=width_s * count)
    for ts, value in samples:
        i = int((ts - start).total_seconds() // width_s)
        if 0 <= i < count and math.isfinite(value):  # rows from before the protocol's bounds
            sums[i] += value
            ns[i] += 1
    return [s / n if n else None for s, n in zip(sums, ns, strict=True)]


def _recent(now: datetime, width_s: int, count: int) -> dict[int, dict[str, list]]:
    start = now - timedelta(seconds=width_s * count)
    rows = TelemetrySample.objects.filter(ts__gt=start, ts__lte=now, resolution_s=0).values_list(
        "node_id", "ts", "p99_ms", "auc"
    )
    recent: dict[int, dict[str, list]] = defaultdict(lambda: {"p99_ms": [], "auc": []})
    for node_id, ts, p99, auc in rows:
        if p99 is not None:
            recent[node_id]["p99_ms"].append((ts, p99))
        if auc is not None:
            recent[node_id]["auc"].append((ts, auc))
    return recent


def _check_sla(node: Node, means: list[float | None], now: datetime, report: WatchdogReport):
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    sla = node.policy.sla_p99_ms if node.policy else protocol.POLICY_DEFAULTS["sla_p99_ms"]
    if all(m is not None and m > sla for m in means):
        alert, created = raise_alert(
            node,
            Alert.Kind.SLA_VIOLATION,
            Alert.Severity.CRITICAL,
            f"P99 over the {sla:g} ms SLA for {count} intervals of {width} s",
            {"sla_p99_ms": sla, "interval_s": width, "p99_ms_per_interval": means},
            now,
        )
        if created:
            report.raised.append(f"{node.name}:{alert.kind}")
        if _qos_change_due(alert, now):
            reason = f"P99 {means[-1]:.1f} ms over the {sla:g} ms SLA for {count} intervals"
            _apply_qos_change(node, alert, tighten_trainer_qos(node, reason), now, report.tightened)
        return
    if means[-1] is not None and means[-1] <= sla:
        if resolve_alerts(node, Alert.Kind.SLA_VIOLATION, now, "P99 back within the SLA"):
            report.resolved.append(f"{node.name}:{Alert.Kind.SLA_VIOLATION}")
    if all(m is not None and m <= sla for m in means):
        latest = (
            Alert.objects.filter(node=node, kind=Alert.Kind.SLA_VIOLATION)
            .order_by("-raised_at")
            .first()
        )
        if latest is not None and _qos_change_due(latest, now):
            reason = f"P99 within the {sla:g} ms SLA for {count} intervals"
            _apply_qos_change(node, latest, relax_trainer_qos(node, reason), now, report.relaxed)


def _qos_change_due(alert: Alert, now: datetime) -> bool:
    """The watchdog changes a node's QoS at most once per N intervals, so that every change
    has a full window of telemetry to show its effect before the next."""
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    last = alert.last_escalated_at
    return last is None or now - last >= timedelta(seconds=width * count)


def _apply_qos_change(node, alert, version, now: datetime, changes: list[str]) -> None:
    """Record a change (None: the duty was already at its floor or back at its target)."""
    if version is None:
        return
    alert.last_escalated_at = now  # the last QoS change made for this alert
    alert.save(update_fields=["last_escalated_at"])
    changes.append(f"{node.name}:{version.policy.name} v{version.version}")
    request_action(node, "apply_policy", actor=WATCHDOG)


def _check_auc(node: Node, means: list[float | None], now: datetime, report: WatchdogReport):
    floor = node.policy.auc_floor if node.policy else None
    if floor is None:
        return
    if all(m is not None and m < floor for m in means):
        _, created = raise_alert(
            node,
            Alert.Kind.AUC_DROP,
            Alert.Severity.WARNING,
            f"AUC under the {floor:g} floor for {len(means)} intervals",
            {"auc_floor": floor, "auc_per_interval": means},
            now,
        )
        if created:
            report.raised.append(f"{node.name}:{Alert.Kind.AUC_DROP}")
    elif means[-1] is not None and means[-1] >= floor:
        if resolve_alerts(node, Alert.Kind.AUC_DROP, now, "AUC back over the floor"):
            report.resolved.append(f"{node.name}:{Alert.Kind.AUC_DROP}")


def _mark_down(node: Node, now: datetime, report: WatchdogReport) -> None:
    node.status = Node.Status.DOWN
    node.save(update_fields=["status"])
    transaction.on_commit(lambda: status.broadcast(events.node_status(node), node_name=node.name))
    assert node.last_seen is not None  # run() picks nodes by last_seen__lt
    silent = (now - node.last_seen).total_seconds()
    _, created = raise_alert(
        node,
        Alert.Kind.NODE_DOWN,
        Alert.Severity.CRITICAL,
        f"No telemetry for {silent:.0f} s",
        {"last_seen": node.last_seen.timestamp()},
        now,
    )
    if created:
        report.raised.append(f"{node.name}:{Alert.Kind.NODE_DOWN}")


def _isolated(node: Node, report: WatchdogReport, check: Callable[[], None]) -> None:
    """Run one node's check in its own transaction; its failure is that node's alone."""
    try:
        with transaction.atomic():
            check()
    except Exception:
        log.exception("watchdog: checking node %s failed", node.name)
        report.failed.append(node.name)


def run(now: datetime | None = None) -> WatchdogReport:
    now = now or timezone.now()
    report = WatchdogReport()
    limit = now - timedelta(seconds=settings.LIVEUPDATE_NODE_DOWN_S)
    for node in Node.objects.filter(status=Node.Status.ONLINE, last_seen__lt=limit):
        _isolated(node, report, functools.partial(_mark_down, node, now, report))
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    recent = _recent(now, width, count)
    for node in Node.objects.filter(pk__in=list(recent)).select_related("policy"):

        def check(node: Node = node) -> None:
            series = recent[node.pk]
            _check_sla(node, interval_means(series["p99_ms"], now, width, count), now, report)
            _check_auc(node, interval_means(series["auc"], now, width, count), now, report)

        _isolated(node, report, check)
    return report
