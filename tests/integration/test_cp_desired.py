"""The control plane's half of desired state (issue 17, failure 2): a node reports what it runs
in its telemetry, and the plane re-sends the policy version and the checkpoint it lacks (a node
restarted into its defaults), once per resend interval, never when the node is up to date."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.utils import timezone

from controlplane.models import ModelCheckpoint, NodeAction, Policy
from controlplane.services import actions, desired
from tests.integration.cp_support import INGEST, duty_cut, sample

pytestmark = pytest.mark.django_db

CHECKSUM = "sha256:" + "ab" * 32


def report(clients, running, seq: int = 0) -> int:
    body = {"node": clients.node.name, "samples": [sample(seq)], "running": running}
    response = clients("node").post(INGEST, json.dumps(body), content_type="application/json")
    return response.status_code


def test_a_node_that_lost_its_policy_and_base_is_sent_both_again(clients, sent_tasks):
    node = clients.node
    policy = Policy.objects.create(name="p", version=3, max_trainer_duty=0.8)
    actions.request_action(node, "apply_policy", actor="user:ops", policy=policy)
    # an edit saved since but not applied: the node is never sent it
    Policy.objects.filter(pk=policy.pk).update(version=4, max_trainer_duty=0.1)
    duty_cut(node, 0.2)  # the watchdog's cut goes back with the policy
    checkpoint = ModelCheckpoint.objects.create(name="base-2", location="/x", checksum=CHECKSUM)
    actions.request_action(node, "rebase", actor="user:ops", checkpoint=checkpoint)
    NodeAction.objects.update(created=timezone.now() - timedelta(minutes=5))  # not "recent"
    sent_tasks.clear()
    now = timezone.now()

    assert report(clients, {"policy_version": None, "checkpoint": None}) == 200  # restarted
    node.refresh_from_db()
    assert node.running_policy_version is None and node.running_reported_at is not None
    assert desired.reconcile(now) == ["matrix-node:apply_policy v3", "matrix-node:rebase base-2"]
    assert [t["name"] for t in sent_tasks] == ["nodeworker.apply_policy", "nodeworker.rebase"]
    assert sent_tasks[0]["kwargs"]["version"] == 3
    assert sent_tasks[0]["kwargs"]["policy"]["max_trainer_duty"] == 0.8
    assert sent_tasks[0]["kwargs"]["overrides"] == {"max_trainer_duty": 0.2}
    assert sent_tasks[1]["kwargs"]["checkpoint"]["checksum"] == CHECKSUM
    assert desired.reconcile(now) == []  # sent within the resend interval: not again

    assert report(clients, {"policy_version": 3, "checkpoint": CHECKSUM}, seq=1) == 200
    NodeAction.objects.update(created=timezone.now() - timedelta(minutes=5))
    assert desired.reconcile(timezone.now()) == []  # up to date: nothing to send


def test_a_node_that_reports_nothing_is_left_alone(clients, sent_tasks):
    clients.node.policy = Policy.objects.create(name="q", version=2)
    clients.node.save()
    assert report(clients, None) == 200
    assert desired.reconcile(timezone.now()) == [] and sent_tasks == []


@pytest.mark.parametrize(
    "running",
    [
        {"policy_version": -1},
        {"policy_version": 2**63},
        {"checkpoint": "not-a-checksum"},
        {"policy_version": 1, "extra": 1},
        [1],
    ],
)
def test_a_malformed_running_state_is_a_field_error(clients, running):
    assert report(clients, running) == 400
