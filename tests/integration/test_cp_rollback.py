"""Versions and rollback on the control plane's side, on the test database: the snapshot
actions' API (arguments checked against their declaration, roles), "revert policy to vN", and
the automatic rollback the watchdog's beat task runs (controlplane.services.rollback)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from controlplane.models import Alert, Node, NodeAction, Policy, PolicyVersion
from controlplane.services import actions, rollback
from controlplane.services.policies import save_policy
from tests.integration.cp_support import feed, make_node

pytestmark = pytest.mark.django_db
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
INTERVALS = override_settings(LIVEUPDATE_SLA_INTERVAL_S=10)


def feed_auc(node: Node, aucs: list[float], end: datetime) -> None:
    """One sample per second ending at ``end`` with the given AUC values (oldest first)."""
    feed(node, [5.0] * len(aucs), end, auc=aucs)


def node_with(name: str, **policy_fields) -> Node:
    """A node whose policy was applied an hour before NOW (the rollback judges applied ones)."""
    policy = Policy(name=f"p-{name}", **policy_fields)
    save_policy(policy, actor="user:ops", reason="initial")
    node = make_node(name, policy=policy)[0]
    actions.request_action(node, "apply_policy", actor="user:ops", now=NOW - timedelta(hours=1))
    return node


def restores(sent_tasks) -> list[dict]:
    return [t for t in sent_tasks if t["name"] == "nodeworker.restore_snapshot"]


# --- the snapshot actions ----------------------------------------------------------------------


def test_restore_snapshot_is_sent_with_checked_arguments(clients, sent_tasks):
    make_node("snappy")
    url = "/api/nodes/snappy/restore_snapshot/"
    sent = clients("operator").post(url, {"name": "snap-1733500000000000000"}, format="json")
    assert sent.status_code == 202, sent.json()
    assert sent_tasks[-1]["name"] == "nodeworker.restore_snapshot"
    assert sent_tasks[-1]["kwargs"] == {"name": "snap-1733500000000000000"}
    for body, field in (
        ({"name": "../../etc/passwd"}, "name"),
        ({}, "name"),
        ({"name": "base", "min_auc": 1.5}, "min_auc"),
        ({"name": "base", "reason": "x" * 301}, "reason"),
    ):
        response = clients("operator").post(url, body, format="json")
        assert response.status_code == 400 and field in response.json(), body
    assert clients("viewer").post(url, {"name": "base"}, format="json").status_code == 403
    assert len(sent_tasks) == 1
    listed = clients("viewer").post("/api/nodes/snappy/list_snapshots/", {}, format="json")
    assert listed.status_code == 202 and sent_tasks[-1]["name"] == "nodeworker.list_snapshots"
    assert NodeAction.objects.filter(action="list_snapshots", actor="user:u-viewer").exists()


# --- revert policy to vN -------------------------------------------------------------------------


def test_revert_policy_to_a_version_saves_a_new_audited_version(clients):
    admin = clients("admin")
    created = admin.post("/api/policies/", {"name": "rev", "sla_p99_ms": 30.0}, format="json")
    pid = created.json()["id"]
    changed = {"name": "rev", "sla_p99_ms": 80.0, "r_max": 8}
    assert admin.put(f"/api/policies/{pid}/", changed, format="json").status_code == 200
    reverted = admin.post(f"/api/policies/{pid}/revert/", {"version": 1}, format="json")
    assert reverted.status_code == 200, reverted.json()
    assert reverted.json()["version"] == 3
    assert reverted.json()["sla_p99_ms"] == 30.0 and reverted.json()["r_max"] == 16
    v3 = PolicyVersion.objects.get(policy_id=pid, version=3)
    assert v3.reason == "reverted to v1" and v3.actor == "user:u-admin"
    assert v3.changes == {"sla_p99_ms": [80.0, 30.0], "r_max": [8, 16]}
    assert v3.values == PolicyVersion.objects.get(policy_id=pid, version=1).values
    missing = admin.post(f"/api/policies/{pid}/revert/", {"version": 99}, format="json")
    assert missing.status_code == 400 and "version" in missing.json()
    bad = admin.post(f"/api/policies/{pid}/revert/", {"version": "v1"}, format="json")
    assert bad.status_code == 400
    for role in ("viewer", "operator"):
        refused = clients(role).post(f"/api/policies/{pid}/revert/", {"version": 1}, format="json")
        assert refused.status_code == 403


def test_rollback_after_intervals_is_a_bounded_policy_field(clients):
    admin = clients("admin")
    for value in (-1, 361, 2.5, "3x"):
        body = {"name": f"rb-{value}", "rollback_after_intervals": value}
        response = admin.post("/api/policies/", body, format="json")
        assert response.status_code == 400 and "rollback_after_intervals" in response.json()
    ok = admin.post("/api/policies/", {"name": "rb", "rollback_after_intervals": 6}, format="json")
    assert ok.status_code == 201 and ok.json()["rollback_after_intervals"] == 6


# --- automatic rollback ------------------------------------------------------------------------


@INTERVALS
def test_auc_under_the_floor_for_n_intervals_restores_the_last_good_snapshot(sent_tasks):
    node = node_with("edge-1", auc_floor=0.7, rollback_after_intervals=3)
    feed_auc(node, [0.75] * 10 + [0.62] * 30, NOW)
    assert rollback.run(NOW - timedelta(seconds=10)) == []  # 2 of 3 intervals under: not yet
    assert rollback.run(NOW) == ["edge-1"]
    (task,) = restores(sent_tasks)
    assert task["name"] == "nodeworker.restore_snapshot" and task["queue"] == "node.edge-1"
    assert task["kwargs"]["name"] == "last_good" and task["kwargs"]["min_auc"] == 0.7
    assert "0.6200 under 0.7000 for 3 intervals" in task["kwargs"]["reason"]
    action = NodeAction.objects.get(action="restore_snapshot")
    assert action.actor == "watchdog" and action.state == "sent"
    alert = Alert.objects.get(node=node, kind="rollback", resolved_at=None)
    assert alert.details["action"] == action.pk
    # The AUC still shows the bad factors for a while: no second rollback until N fresh
    # intervals after the first; then, still under, another.
    NodeAction.objects.filter(pk=action.pk).update(created=NOW)
    feed_auc(node, [0.62] * 20, NOW + timedelta(seconds=20))
    assert rollback.run(NOW + timedelta(seconds=20)) == []
    feed_auc(node, [0.62] * 15, NOW + timedelta(seconds=35))
    assert rollback.run(NOW + timedelta(seconds=35)) == ["edge-1"]
    assert len(restores(sent_tasks)) == 2
    feed_auc(node, [0.74] * 30, NOW + timedelta(seconds=65))
    assert rollback.run(NOW + timedelta(seconds=65)) == []
    alert.refresh_from_db()
    assert alert.resolved_at is not None  # AUC back at its threshold
    assert len(restores(sent_tasks)) == 2


@INTERVALS
def test_auc_under_the_baseline_node_triggers_it_too_and_off_means_off(sent_tasks):
    live = node_with("live-1", rollback_after_intervals=2)
    off = node_with("live-off", rollback_after_intervals=0)
    base = node_with("base-1", mode="delta_sync")
    for node in (live, off):
        feed_auc(node, [0.66] * 20, NOW)
    feed_auc(base, [0.70] * 20, NOW)
    assert rollback.run(NOW) == ["live-1"]
    (task,) = restores(sent_tasks)
    assert task["kwargs"]["min_auc"] == 0.7  # the baseline's AUC is the threshold
    assert task["queue"] == "node.live-1"


@INTERVALS
def test_nothing_is_judged_without_a_floor_or_a_baseline_or_with_missing_data(sent_tasks):
    no_threshold = node_with("alone", rollback_after_intervals=2)
    feed_auc(no_threshold, [0.51] * 20, NOW)
    gap = node_with("gappy", auc_floor=0.7, rollback_after_intervals=3)
    feed_auc(gap, [0.6] * 10, NOW)  # only the newest of the 3 intervals has samples
    assert rollback.run(NOW) == []
    assert rollback.thresholds(0.7, [None, 0.72]) == [0.7, 0.72]
    assert rollback.thresholds(None, [None]) == [None]
    assert not rollback.below([0.6, None], [0.7, 0.7])
    assert rollback.below([0.6, 0.69], [0.7, 0.7])
    assert restores(sent_tasks) == []
