"""The SLA watchdog, run by Celery beat every LIVEUPDATE_SLA_INTERVAL_S seconds.

A node is judged against the policy people applied to it (Node.applied_policy; never a saved
but unapplied edit; a node nothing was applied to against the protocol's defaults, with alerts
but no override, which could only be sent with an applied policy), on the
intervals that began after that policy or the watchdog's last change took effect (Node.applied_at),
so a new threshold is never judged on the past.

- P99 over the node's SLA in each of the last N intervals (N = LIVEUPDATE_SLA_INTERVALS, each
  interval's P99 = the mean of its samples' p99_ms): an sla_violation alert, and the node's
  max_trainer_duty is halved by an override (controlplane.overrides; the policy stays as people
  set it), sent to the node with its applied policy. While the breach lasts it is halved again
  every N intervals, down to MIN_TRAINER_DUTY. Resolved when the newest interval is within the
  SLA again. Once P99 has been within the SLA in each of the last N intervals, the override is
  doubled back every N intervals and lifted when it reaches the policy's value, so a passing
  spike does not starve the trainer. An override is dropped at its expiry whatever happens.
- AUC under the policy's auc_floor in each of the last N intervals: an auc_drop alert,
  resolved when the newest interval is over the floor again or the floor is removed.
- A node silent for longer than LIVEUPDATE_NODE_DOWN_S: status down and a node_down alert
  (resolved by the ingest path when the node reports again).
The verdicts are computed from stored telemetry and the node's overrides, so the watchdog keeps
no state of its own. Each node is checked in a transaction of its own: an error with one node's
data is logged and reported, and every other node is still checked."""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from controlplane import events, status
from controlplane.models import Alert, Node, TelemetrySample
from controlplane.services.actions import request_action
from controlplane.services.alerts import raise_alert, resolve_alerts
from controlplane.services.policies import (
    WATCHDOG,
    OverrideChange,
    applied_policy,
    drop_expired_overrides,
    relax_trainer_qos,
    tighten_trainer_qos,
)
from nodeworker import protocol

log = logging.getLogger(__name__)


@dataclass
class WatchdogReport:
    raised: list[str] = field(default_factory=list)  # "<node>:<kind>"
    resolved: list[str] = field(default_factory=list)
    tightened: list[str] = field(default_factory=list)  # "<node>:<field> <old> -> <new>"
    relaxed: list[str] = field(default_factory=list)  # the same; "policy": no override
    failed: list[str] = field(default_factory=list)  # nodes whose check raised (logged)


@dataclass(frozen=True)
class _Verdicts:
    """Where one node's alerts at ``now`` are raised and resolved, and recorded in ``report``."""

    node: Node
    now: datetime
    report: WatchdogReport

    def alert(self, kind: str, severity: str, message: str, details: dict) -> None:
        _, created = raise_alert(self.node, kind, severity, message, details, self.now)
        if created:
            self.report.raised.append(f"{self.node.name}:{kind}")

    def resolve(self, kind: str, reason: str) -> None:
        if resolve_alerts(self.node, kind, self.now, reason):
            self.report.resolved.append(f"{self.node.name}:{kind}")


def interval_means(
    samples: list[tuple[datetime, float]],
    now: datetime,
    width_s: int,
    count: int,
    since: datetime | None = None,
) -> list[float | None]:
    """Mean value in each of the ``count`` intervals ending at ``now``, oldest first (None: no
    sample in that interval, or it began before ``since``: no evidence about what runs now)."""
    sums, ns = [0.0] * count, [0] * count
    start = now - timedelta(seconds=width_s * count)
    for ts, value in samples:
        i = int((ts - start).total_seconds() // width_s)
        if 0 <= i < count and math.isfinite(value):  # rows from before the protocol's bounds
            sums[i] += value
            ns[i] += 1
    return [
        s / n if n and (since is None or start + timedelta(seconds=width_s * i) >= since) else None
        for i, (s, n) in enumerate(zip(sums, ns, strict=True))
    ]


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


def _check_sla(verdicts: _Verdicts, applied: protocol.Policy, means: list[float | None]) -> None:
    node, now, report = verdicts.node, verdicts.now, verdicts.report
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    sla = applied.sla_p99_ms
    if all(m is not None and m > sla for m in means):
        verdicts.alert(
            Alert.Kind.SLA_VIOLATION,
            Alert.Severity.CRITICAL,
            f"P99 over the {sla:g} ms SLA for {count} intervals of {width} s",
            {"sla_p99_ms": sla, "interval_s": width, "p99_ms_per_interval": means},
        )
        if node.applied_policy is not None:
            reason = f"P99 {means[-1]:.1f} ms over the {sla:g} ms SLA for {count} intervals"
            change = tighten_trainer_qos(node, applied, reason, now)
            _send_changes(node, [change], now, report.tightened)
        return
    if means[-1] is not None and means[-1] <= sla:
        verdicts.resolve(Alert.Kind.SLA_VIOLATION, "P99 back within the SLA")
    if all(m is not None and m <= sla for m in means):
        reason = f"P99 within the {sla:g} ms SLA for {count} intervals"
        _send_changes(node, [relax_trainer_qos(node, applied, reason)], now, report.relaxed)


def _send_changes(
    node: Node, changes: list[OverrideChange | None], now: datetime, done: list[str]
) -> None:
    """Send the applied policy with the changed overrides to the node (None: no change). The
    intervals before ``now`` are no evidence about what the node runs from then on."""
    made = [str(c) for c in changes if c is not None]
    if made:
        request_action(node, "apply_policy", actor=WATCHDOG, reapply=True, now=now)
        done += made


def _check_auc(verdicts: _Verdicts, applied: protocol.Policy, means: list[float | None]) -> None:
    floor = applied.auc_floor
    if floor is None:
        verdicts.resolve(Alert.Kind.AUC_DROP, "AUC floor removed")
    elif all(m is not None and m < floor for m in means):
        verdicts.alert(
            Alert.Kind.AUC_DROP,
            Alert.Severity.WARNING,
            f"AUC under the {floor:g} floor for {len(means)} intervals",
            {"auc_floor": floor, "auc_per_interval": means},
        )
    elif means[-1] is not None and means[-1] >= floor:
        verdicts.resolve(Alert.Kind.AUC_DROP, "AUC back over the floor")


def _mark_down(node: Node, now: datetime, report: WatchdogReport) -> None:
    node.status = Node.Status.DOWN
    node.save(update_fields=["status"])
    transaction.on_commit(lambda: status.broadcast(events.node_status(node), node_name=node.name))
    assert node.last_seen is not None  # run() picks nodes by last_seen__lt
    silent = (now - node.last_seen).total_seconds()
    _Verdicts(node, now, report).alert(
        Alert.Kind.NODE_DOWN,
        Alert.Severity.CRITICAL,
        f"No telemetry for {silent:.0f} s",
        {"last_seen": node.last_seen.timestamp()},
    )


def _isolated(node: Node, report: WatchdogReport, check: Callable[[], None]) -> None:
    """Run one node's check in its own transaction; its failure is that node's alone."""
    try:
        with transaction.atomic():
            check()
    except Exception:
        log.exception("watchdog: checking node %s failed", node.name)
        report.failed.append(node.name)


def _check_node(node: Node, series: dict[str, list], now: datetime, report: WatchdogReport):
    applied = applied_policy(node) or protocol.DEFAULT_POLICY
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    since = node.applied_at
    verdicts = _Verdicts(node, now, report)
    _check_sla(verdicts, applied, interval_means(series["p99_ms"], now, width, count, since))
    _check_auc(verdicts, applied, interval_means(series["auc"], now, width, count, since))


def _expire_overrides(node: Node, now: datetime, report: WatchdogReport) -> None:
    """Overrides are only made for a node with an applied policy, so there is one to send."""
    _send_changes(node, list(drop_expired_overrides(node, now)), now, report.relaxed)


def run(now: datetime | None = None) -> WatchdogReport:
    now = now or timezone.now()
    report = WatchdogReport()
    limit = now - timedelta(seconds=settings.LIVEUPDATE_NODE_DOWN_S)
    for node in Node.objects.filter(status=Node.Status.ONLINE, last_seen__lt=limit):
        _isolated(node, report, partial(_mark_down, node, now, report))
    for node in Node.objects.filter(overrides__expires_at__lte=now).distinct():
        _isolated(node, report, partial(_expire_overrides, node, now, report))
    width, count = settings.LIVEUPDATE_SLA_INTERVAL_S, settings.LIVEUPDATE_SLA_INTERVALS
    recent = _recent(now, width, count)
    for node in Node.objects.filter(pk__in=list(recent)):
        _isolated(node, report, partial(_check_node, node, recent[node.pk], now, report))
    return report
