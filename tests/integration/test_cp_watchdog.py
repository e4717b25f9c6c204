"""The periodic functions behind Celery beat, called directly on the test database: the SLA
watchdog, node liveness, the AUC floor, checkpoint roll-out and action outcome checks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings

from controlplane.models import Alert, ModelCheckpoint, Node, NodeAction, Policy, TelemetrySample
from controlplane.services import actions, rollout, watchdog
from controlplane.services.policies import MIN_TRAINER_DUTY, save_policy
from tests.integration.cp_support import feed, make_node

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.usefixtures("sent_tasks"),
]
NOW = datetime(2026, 11, 25, 12, 0, 0, tzinfo=UTC)
SLA = override_settings(
    LIVEUPDATE_SLA_INTERVAL_S=10, LIVEUPDATE_SLA_INTERVALS=3, LIVEUPDATE_NODE_DOWN_S=30
)


def node_with_policy(name="edge-1", applied_at=NOW - timedelta(minutes=5), **fields) -> Node:
    """A node its policy was applied to at ``applied_at``."""
    policy = Policy(name=f"p-{name}", sla_p99_ms=20.0, **fields)
    save_policy(policy, actor="user:ops", reason="initial")
    node = make_node(name)[0]
    actions.request_action(node, "apply_policy", actor="user:ops", policy=policy, now=applied_at)
    return node


def duty(node: Node) -> tuple[float, float | None]:
    """(the saved policy's max_trainer_duty, the watchdog's override or None)."""
    node.refresh_from_db()
    override = node.overrides.filter(field="max_trainer_duty").first()
    return node.policy.max_trainer_duty, None if override is None else override.value


def test_interval_means():
    samples = [(NOW - timedelta(seconds=s), float(s)) for s in (25, 24, 5, 1)]
    assert watchdog.interval_means(samples, NOW, 10, 3) == [24.5, None, 3.0]
    # intervals that began before ``since`` are no evidence
    since = NOW - timedelta(seconds=20)
    assert watchdog.interval_means(samples, NOW, 10, 3, since) == [None, None, 3.0]


@SLA
def test_sla_breach_raises_an_alert_and_overrides_the_duty_never_the_policy(sent_tasks):
    node = node_with_policy(max_trainer_duty=0.8)
    sent_tasks.clear()
    feed(node, [35.0] * 30, NOW)
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:sla_violation"]
    assert report.tightened == ["edge-1:max_trainer_duty policy -> 0.4"]
    alert = Alert.objects.get(node=node, kind="sla_violation", resolved_at=None)
    assert alert.details["p99_ms_per_interval"] == [35.0, 35.0, 35.0]
    assert duty(node) == (0.8, 0.4)
    assert node.policy.version == 1 and node.policy.versions.count() == 1  # untouched
    override = node.overrides.get()
    assert override.actor == "watchdog" and "SLA" in override.reason and override.since == NOW
    assert override.expires_at == NOW + timedelta(hours=1)
    # ... sent to the node with the policy as applied: the node runs the stricter of the two.
    (task,) = sent_tasks
    assert task["name"] == "nodeworker.apply_policy" and task["queue"] == "node.edge-1"
    assert task["kwargs"]["policy"]["max_trainer_duty"] == 0.8 and task["kwargs"]["version"] == 1
    assert task["kwargs"]["overrides"] == {"max_trainer_duty": 0.4}
    assert NodeAction.objects.filter(actor="watchdog").count() == 1
    assert node.applied_at == NOW

    # Still breaching one interval later: the intervals before the cut are no evidence yet.
    feed(node, [35.0] * 10, NOW + timedelta(seconds=10))
    assert watchdog.run(NOW + timedelta(seconds=10)).tightened == []
    # After N intervals under the cut it is halved again; the alert stays the same one.
    feed(node, [35.0] * 20, NOW + timedelta(seconds=30))
    report = watchdog.run(NOW + timedelta(seconds=30))
    assert report.tightened == ["edge-1:max_trainer_duty 0.4 -> 0.2"]
    assert Alert.objects.filter(node=node).count() == 1
    assert duty(node) == (0.8, 0.2)
    assert node.overrides.get().since == NOW  # since the first cut

    # Recovery resolves the alert; the override stays until P99 has been within the SLA for
    # N whole intervals after the last cut.
    feed(node, [5.0] * 10, NOW + timedelta(seconds=40))
    report = watchdog.run(NOW + timedelta(seconds=40))
    assert report.resolved == ["edge-1:sla_violation"] and report.relaxed == []
    alert.refresh_from_db()
    assert alert.resolved_at is not None
    assert duty(node) == (0.8, 0.2)


@SLA
def test_after_recovery_the_override_is_lifted_step_by_step(sent_tasks):
    node = node_with_policy(max_trainer_duty=0.8)
    feed(node, [35.0] * 30, NOW)
    watchdog.run(NOW)
    feed(node, [35.0] * 30, NOW + timedelta(seconds=30))
    watchdog.run(NOW + timedelta(seconds=30))
    assert duty(node) == (0.8, 0.2)
    sent_tasks.clear()

    def at(seconds: int) -> list[str]:
        end = NOW + timedelta(seconds=seconds)
        last = TelemetrySample.objects.filter(node=node).order_by("-ts").first().ts
        feed(node, [5.0] * int((end - last).total_seconds()), end)
        return watchdog.run(end).relaxed

    assert at(50) == []  # two healthy intervals of three
    assert at(60) == ["edge-1:max_trainer_duty 0.2 -> 0.4"]  # three healthy intervals: doubled
    assert at(80) == []  # the next step waits N intervals after this one
    assert at(90) == ["edge-1:max_trainer_duty 0.4 -> policy"]  # at the policy's value: lifted
    assert at(150) == []  # nothing left to give back
    assert duty(node) == (0.8, None) and not node.overrides.exists()
    assert node.policy.versions.count() == 1
    assert [t["kwargs"]["overrides"] for t in sent_tasks] == [{"max_trainer_duty": 0.4}, {}]
    assert {t["kwargs"]["policy"]["max_trainer_duty"] for t in sent_tasks} == {0.8}


@SLA
def test_the_watchdog_judges_and_sends_only_what_was_applied(sent_tasks):
    node = node_with_policy(max_trainer_duty=0.8)
    policy = node.policy
    policy.sla_p99_ms, policy.max_trainer_duty = 100.0, 0.1
    save_policy(policy, actor="user:ops", reason="staged, not applied")
    sent_tasks.clear()
    feed(node, [35.0] * 30, NOW)  # over the applied 20 ms, under the saved 100 ms
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:sla_violation"]
    assert report.tightened == ["edge-1:max_trainer_duty policy -> 0.4"]
    (task,) = sent_tasks  # the applied v1, never the staged v2
    assert task["kwargs"]["version"] == 1 and task["kwargs"]["policy"]["sla_p99_ms"] == 20.0
    node.refresh_from_db()
    assert node.applied_policy_version == 1 and node.policy.version == 2


@SLA
def test_a_new_sla_is_not_judged_on_the_telemetry_from_before_it():
    node = node_with_policy(applied_at=NOW - timedelta(seconds=5))
    feed(node, [35.0] * 30, NOW)
    assert watchdog.run(NOW).raised == []
    feed(node, [35.0] * 25, NOW + timedelta(seconds=25))  # the window began 5 s after it
    assert watchdog.run(NOW + timedelta(seconds=25)).raised == ["edge-1:sla_violation"]


@SLA
def test_an_operator_applying_a_lower_duty_makes_the_override_moot(sent_tasks):
    node = node_with_policy(max_trainer_duty=0.8)
    feed(node, [35.0] * 30, NOW)
    watchdog.run(NOW)  # override 0.4
    policy = node.policy
    policy.refresh_from_db()
    policy.max_trainer_duty = 0.1
    save_policy(policy, actor="user:ops", reason="keep the trainer quiet")
    actions.request_action(node, "apply_policy", actor="user:ops", now=NOW + timedelta(seconds=10))
    assert sent_tasks[-1]["kwargs"]["overrides"] == {"max_trainer_duty": 0.4}
    feed(node, [5.0] * 40, NOW + timedelta(seconds=40))
    assert watchdog.run(NOW + timedelta(seconds=40)).relaxed == [
        "edge-1:max_trainer_duty 0.4 -> policy"
    ]
    assert duty(node) == (0.1, None)


@SLA
def test_an_override_is_dropped_at_its_expiry(sent_tasks):
    node = node_with_policy()
    feed(node, [35.0] * 30, NOW)
    watchdog.run(NOW)
    sent_tasks.clear()
    later = NOW + timedelta(hours=1)
    report = watchdog.run(later)  # silent since: down, and the override expired
    assert report.relaxed == ["edge-1:max_trainer_duty 0.5 -> policy"]
    assert duty(node) == (1.0, None)
    assert [t["kwargs"]["overrides"] for t in sent_tasks] == [{}]


@SLA
def test_a_node_nothing_was_applied_to_is_judged_on_the_defaults_without_overrides(
    sent_tasks,
):
    policy = Policy(name="never-applied", sla_p99_ms=20.0)
    save_policy(policy, actor="user:ops")
    node = make_node("edge-1", policy=policy)[0]
    feed(node, [35.0] * 30, NOW)  # over the saved 20 ms, under the default 50 ms
    assert watchdog.run(NOW).raised == []
    feed(node, [60.0] * 30, NOW + timedelta(seconds=30))
    report = watchdog.run(NOW + timedelta(seconds=30))
    assert report.raised == ["edge-1:sla_violation"] and report.tightened == []
    assert sent_tasks == [] and not node.overrides.exists()


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
def test_a_shared_policy_is_never_copied_nor_changed():
    shared = Policy(name="fleet", sla_p99_ms=20.0)
    save_policy(shared, actor="user:ops")
    slow, _ = make_node("slow")
    fast, _ = make_node("fast")
    for node in (slow, fast):
        actions.request_action(
            node, "apply_policy", actor="user:ops", policy=shared, now=NOW - timedelta(minutes=1)
        )
    feed(slow, [50.0] * 30, NOW)
    feed(fast, [5.0] * 30, NOW)
    assert watchdog.run(NOW).tightened == ["slow:max_trainer_duty policy -> 0.5"]
    assert duty(slow) == (1.0, 0.5) and duty(fast) == (1.0, None)
    assert Policy.objects.count() == 1 and shared.versions.count() == 1


@SLA
def test_duty_never_goes_under_the_floor():
    node = node_with_policy(max_trainer_duty=MIN_TRAINER_DUTY)
    feed(node, [50.0] * 30, NOW)
    report = watchdog.run(NOW)
    assert report.raised == ["edge-1:sla_violation"] and report.tightened == []
    assert duty(node) == (MIN_TRAINER_DUTY, None)


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


@SLA
def test_an_auc_drop_alert_resolves_when_its_floor_is_removed():
    node = node_with_policy(auc_floor=0.7)
    feed(node, [5.0] * 30, NOW, auc=0.6)
    assert watchdog.run(NOW).raised == ["edge-1:auc_drop"]
    policy = node.policy
    policy.auc_floor = None
    save_policy(policy, actor="user:ops", reason="no floor")
    feed(node, [5.0] * 10, NOW + timedelta(seconds=10), auc=0.6)
    assert watchdog.run(NOW + timedelta(seconds=10)).resolved == []  # saved, not applied
    actions.request_action(node, "apply_policy", actor="user:ops", now=NOW + timedelta(seconds=15))
    feed(node, [5.0] * 5, NOW + timedelta(seconds=20), auc=0.6)
    report = watchdog.run(NOW + timedelta(seconds=20))
    assert report.resolved == ["edge-1:auc_drop"] and report.raised == []
    alert = Alert.objects.get(kind="auc_drop")
    assert alert.details["resolution"] == "AUC floor removed"


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
