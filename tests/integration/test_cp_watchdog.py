"""The periodic functions behind Celery beat, called directly on the test database: the SLA
watchdog, node liveness, the AUC floor, checkpoint roll-out and action outcome checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from controlplane.models import Alert, ModelCheckpoint, Node, NodeAction, Policy, TelemetrySample
from controlplane.services import actions, rollout, watchdog
from controlplane.services.policies import MIN_TRAINER_DUTY, save_policy
from tests.integration.cp_support import make_node

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("sent_tasks"),
]
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
SLA = override_settings(
    LIVEUPDATE_SLA_INTERVAL_S=10, LIVEUPDATE_SLA_INTERVALS=3, LIVEUPDATE_NODE_DOWN_S=30
)


def feed(node: Node, p99: list[float], end: datetime, auc: float | None = 0.75) -> None:
    """One sample per second ending at ``end`` with the given P99 values (oldest first)."""
    last = TelemetrySample.objects.filter(node=node).order_by("-seq").first()
    seq0 = last.seq + 1 if last else 0
    start = end - timedelta(seconds=len(p99) - 1)
    TelemetrySample.objects.bulk_create(
        TelemetrySample(
            node=node,
            seq=seq0 + i,
            ts=start + timedelta(seconds=i),
            qps=100.0,
            p99_ms=value,
            auc=auc,
            memory_overhead_bytes=1.0,
            memory_overhead_pct=1.0,
            trainer_samples_per_s=10.0,
            trainer_duty=0.5,
            throttle="running",
        )
        for i, value in enumerate(p99)
    )
    node.status, node.last_seen = Node.Status.ONLINE, end
    node.save()


def node_with_policy(name="edge-1", **policy_fields) -> Node:
    policy = Policy(name=f"p-{name}", sla_p99_ms=20.0, **policy_fields)
    save_policy(policy, actor="user:ops", reason="initial")
    return make_node(name, policy=policy)[0]


def test_interval_means():
    samples = [(NOW - timedelta(seconds=s), float(s)) for s in (25, 24, 5, 1)]
    assert watchdog.interval_means(samples, NOW, 10, 3) == [24.5, None, 3.0]


@SLA
def test_sla_breach_raises_an_alert_and_halves_the_trainer_duty(sent_tasks):
    node = node_with_policy(max_trainer_duty=0.8)
    feed(node, [35.0] * 30, NOW)
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:sla_violation"]
    assert report.tightened == ["edge-1:p-edge-1 v2"]
    alert = Alert.objects.get(node=node, kind="sla_violation", resolved_at=None)
    assert alert.details["p99_ms_per_interval"] == [35.0, 35.0, 35.0]
    node.refresh_from_db()
    assert node.policy.max_trainer_duty == 0.4
    version = node.policy.versions.get(version=2)
    assert version.actor == "watchdog" and "SLA" in version.reason
    assert version.changes == {"max_trainer_duty": [0.8, 0.4]}
    # ... and the tightened policy is sent to the node.
    (task,) = sent_tasks
    assert task["name"] == "nodeworker.apply_policy" and task["queue"] == "node.edge-1"
    assert task["kwargs"]["policy"]["max_trainer_duty"] == 0.4
    assert NodeAction.objects.get().actor == "watchdog"

    # Still breaching one interval later: not yet due for another halving.
    feed(node, [35.0] * 10, NOW + timedelta(seconds=10))
    assert watchdog.run(NOW + timedelta(seconds=10)).tightened == []
    # After N more intervals it is halved again; the alert stays the same one.
    feed(node, [35.0] * 20, NOW + timedelta(seconds=30))
    assert watchdog.run(NOW + timedelta(seconds=30)).tightened == ["edge-1:p-edge-1 v3"]
    assert Alert.objects.filter(node=node).count() == 1
    node.policy.refresh_from_db()
    assert node.policy.max_trainer_duty == 0.2

    # Recovery resolves the alert; the duty stays where the watchdog put it until P99 has been
    # within the SLA for N whole intervals.
    feed(node, [5.0] * 10, NOW + timedelta(seconds=40))
    report = watchdog.run(NOW + timedelta(seconds=40))
    assert report.resolved == ["edge-1:sla_violation"] and report.relaxed == []
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    node.policy.refresh_from_db()
    assert node.policy.max_trainer_duty == 0.2


@SLA
def test_after_recovery_the_duty_is_given_back_step_by_step_up_to_the_operators_value(
    sent_tasks,
):
    node = node_with_policy(max_trainer_duty=0.8)
    feed(node, [35.0] * 30, NOW)
    watchdog.run(NOW)
    feed(node, [35.0] * 30, NOW + timedelta(seconds=30))
    watchdog.run(NOW + timedelta(seconds=30))
    node.policy.refresh_from_db()
    assert node.policy.max_trainer_duty == 0.2
    sent_tasks.clear()

    def at(seconds: int) -> list[str]:
        end = NOW + timedelta(seconds=seconds)
        last = TelemetrySample.objects.filter(node=node).order_by("-ts").first().ts
        feed(node, [5.0] * int((end - last).total_seconds()), end)
        return watchdog.run(end).relaxed

    assert at(50) == []  # two healthy intervals of three
    assert at(60) == ["edge-1:p-edge-1 v4"]  # three healthy intervals: doubled
    assert at(80) == []  # the next step waits N intervals after this one
    assert at(90) == ["edge-1:p-edge-1 v5"]
    assert at(150) == []  # back at what the operator set: nothing more to give
    node.policy.refresh_from_db()
    assert node.policy.max_trainer_duty == 0.8
    v4 = node.policy.versions.get(version=4)
    assert v4.actor == "watchdog" and "within" in v4.reason
    assert v4.changes == {"max_trainer_duty": [0.2, 0.4]}
    assert [t["kwargs"]["policy"]["max_trainer_duty"] for t in sent_tasks] == [0.4, 0.8]


@SLA
def test_the_watchdog_never_raises_a_duty_an_operator_lowered_themselves():
    node = node_with_policy(max_trainer_duty=0.8)
    feed(node, [35.0] * 30, NOW)
    watchdog.run(NOW)  # 0.8 -> 0.4 by the watchdog
    policy = node.policy
    policy.refresh_from_db()
    policy.max_trainer_duty = 0.1
    save_policy(policy, actor="user:ops", reason="keep the trainer quiet")
    feed(node, [5.0] * 60, NOW + timedelta(seconds=60))
    assert watchdog.run(NOW + timedelta(seconds=60)).relaxed == []
    policy.refresh_from_db()
    assert policy.max_trainer_duty == 0.1


@SLA
def test_no_alert_unless_every_interval_breaches():
    node = node_with_policy()
    feed(node, [35.0] * 10 + [5.0] * 10 + [35.0] * 10, NOW)
    assert watchdog.run(NOW).raised == []
    node2 = node_with_policy("edge-2")
    feed(node2, [35.0] * 20, NOW)  # only two of three intervals have samples
    assert watchdog.run(NOW).raised == []
    assert not Alert.objects.exists()


@SLA
def test_a_shared_policy_is_copied_for_the_breaching_node_only():
    shared = Policy(name="fleet", sla_p99_ms=20.0)
    save_policy(shared, actor="user:ops")
    slow, _ = make_node("slow", policy=shared)
    make_node("fast", policy=shared)
    feed(slow, [50.0] * 30, NOW)
    watchdog.run(NOW)
    slow.refresh_from_db()
    shared.refresh_from_db()
    assert shared.max_trainer_duty == 1.0 and shared.nodes.get().name == "fast"
    assert slow.policy.name == "fleet-slow" and slow.policy.max_trainer_duty == 0.5
    history = list(slow.policy.versions.order_by("version").values_list("actor", "reason"))
    assert history[0][0] == "watchdog" and "copied from fleet" in history[0][1]
    assert history[1][0] == "watchdog"
    # Recovered: the copy is given back the fleet policy's duty, never more.
    feed(slow, [5.0] * 30, NOW + timedelta(seconds=30))
    assert watchdog.run(NOW + timedelta(seconds=30)).relaxed == ["slow:fleet-slow v3"]
    feed(slow, [5.0] * 30, NOW + timedelta(seconds=60))
    assert watchdog.run(NOW + timedelta(seconds=60)).relaxed == []
    slow.policy.refresh_from_db()
    assert slow.policy.max_trainer_duty == 1.0


@SLA
def test_duty_never_goes_under_the_floor():
    node = node_with_policy(max_trainer_duty=MIN_TRAINER_DUTY)
    feed(node, [50.0] * 30, NOW)
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:sla_violation"] and report.tightened == []
    node.policy.refresh_from_db()
    assert node.policy.max_trainer_duty == MIN_TRAINER_DUTY and node.policy.version == 1


@SLA
def test_a_silent_node_is_marked_down_once():
    node = node_with_policy()
    feed(node, [5.0] * 5, NOW - timedelta(seconds=31))
    make_node("never-seen")  # registered, never reported: not "down"
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:node_down"]
    node.refresh_from_db()
    assert node.status == "down"
    assert watchdog.run(NOW + timedelta(seconds=10)).raised == []
    assert Alert.objects.filter(kind="node_down").count() == 1
    assert Node.objects.get(name="never-seen").status == "registered"


@SLA
def test_auc_under_the_floor_raises_and_resolves():
    node = node_with_policy(auc_floor=0.7)
    feed(node, [5.0] * 30, NOW, auc=0.6)
    assert watchdog.run(NOW).raised == ["edge-1:auc_drop"]
    feed(node, [5.0] * 10, NOW + timedelta(seconds=10), auc=0.8)
    assert watchdog.run(NOW + timedelta(seconds=10)).resolved == ["edge-1:auc_drop"]


def test_rollout_sends_rebase_once_per_node_and_waits_for_down_nodes(sent_tasks):
    up, _ = make_node("edge-1")
    down, _ = make_node("edge-2")
    down.status = Node.Status.DOWN
    down.save()
    ckpt = ModelCheckpoint.objects.create(
        name="base-7", location="/m/7.pt", checksum="sha256:" + "0" * 64
    )
    assert rollout.rollout_checkpoints(NOW) == {}  # nothing marked for roll-out
    rollout.request_rollout(ckpt, NOW)
    assert rollout.rollout_checkpoints(NOW) == {"base-7": ["edge-1"]}
    assert rollout.rollout_checkpoints(NOW) == {}  # edge-1 already has it
    ckpt.refresh_from_db()
    assert ckpt.rollout == "pending"
    down.status = Node.Status.ONLINE
    down.save()
    assert rollout.rollout_checkpoints(NOW) == {"base-7": ["edge-2"]}
    ckpt.refresh_from_db()
    assert ckpt.rollout == "done" and ckpt.rollout_completed_at == NOW
    assert [t["kwargs"]["checkpoint"]["name"] for t in sent_tasks] == ["base-7", "base-7"]
    assert {t["queue"] for t in sent_tasks} == {"node.edge-1", "node.edge-2"}


@override_settings(LIVEUPDATE_ACTION_TIMEOUT_S=60)
def test_an_action_without_a_result_times_out(monkeypatch):
    from controlplane.celery import app

    class Pending:
        state = "PENDING"
        result = None

    monkeypatch.setattr(app, "AsyncResult", lambda task_id: Pending())
    node, _ = make_node("edge-1")
    record = actions.request_action(node, "pause", actor="test")
    assert actions.refresh_action(record, record.sent_at + timedelta(seconds=30)).state == "sent"
    later = record.sent_at + timedelta(seconds=61)
    assert actions.refresh_sent_actions(later) == 1
    record.refresh_from_db()
    assert record.state == "failed" and "no result within 60 s" in record.error


def test_an_unreachable_result_backend_leaves_the_action_sent(monkeypatch):
    from controlplane.celery import app

    class Unreachable:
        @property
        def state(self):
            raise ConnectionError("result backend down")

    monkeypatch.setattr(app, "AsyncResult", lambda task_id: Unreachable())
    node, _ = make_node("edge-1")
    record = actions.request_action(node, "pause", actor="test")
    assert actions.refresh_sent_actions() == 0
    record.refresh_from_db()
    assert record.state == "sent" and record.error == ""
