"""Shared helpers of the control-plane tests: role clients, telemetry samples (as posted, and as
stored rows: feed), a send_task spy."""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.utils import timezone
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from controlplane.models import Node, PolicyOverride, TelemetrySample
from controlplane.roles import LEVELS, ensure_groups
from tests.factories import telemetry_sample

ROLES = ("anonymous", "norole", "viewer", "operator", "admin", "node")
INGEST = "/api/telemetry/ingest/"


def expected_status(role: str, needed: str, ok: int) -> int:
    """What the permission matrix promises: anonymous 401, no role or a node token 403."""
    if role == "anonymous":
        return 401
    if role in ("norole", "node"):
        return 403
    return ok if LEVELS[role] >= LEVELS[needed] else 403


sample = telemetry_sample  # the name these tests use


def make_node(name: str = "edge-1", **fields) -> tuple[Node, str]:
    node = Node(name=name, **fields)
    raw = node.rotate_token()
    node.save()
    return node, raw


def stored_sample(node: Node, seq: int, ts: datetime, **fields) -> TelemetrySample:
    """A telemetry row as ingest stores it (unsaved): every required metric at a plain value,
    ``fields`` over them."""
    metrics = dict(qps=100.0, memory_overhead_bytes=1.0, memory_overhead_pct=1.0,
                   trainer_samples_per_s=10.0, trainer_duty=0.5, throttle="running")  # fmt: skip
    return TelemetrySample(node=node, seq=seq, ts=ts, **{**metrics, **fields})


def duty_cut(node: Node, value: float) -> PolicyOverride:
    """The watchdog's override of the node's max_trainer_duty, in force for the next hour."""
    return PolicyOverride.objects.create(
        node=node,
        field="max_trainer_duty",
        value=value,
        reason="P99 over the SLA",
        since=timezone.now(),
        expires_at=timezone.now() + timedelta(hours=1),
    )


def feed(
    node: Node, p99: list[float], end: datetime, auc: float | list[float] | None = 0.75
) -> None:
    """One sample per second ending at ``end`` with the given P99 values (oldest first); ``auc``
    one value for all, or one per sample."""
    aucs = auc if isinstance(auc, list) else [auc] * len(p99)
    last = TelemetrySample.objects.filter(node=node).order_by("-seq").first()
    seq0 = last.seq + 1 if last else 0
    start = end - timedelta(seconds=len(p99) - 1)
    TelemetrySample.objects.bulk_create(
        stored_sample(node, seq0 + i, start + timedelta(seconds=i), p99_ms=value, auc=aucs[i])
        for i, value in enumerate(p99)
    )
    node.status, node.last_seen = Node.Status.ONLINE, end
    node.save(update_fields=["status", "last_seen"])


class Clients:
    """An APIClient per role: humans authenticate with DRF tokens, the node with its token."""

    def __init__(self):
        ensure_groups()
        users = get_user_model()
        self.users = {}
        self.tokens = {}
        for role in ("norole", "viewer", "operator", "admin"):
            # No password: hashing one costs ~0.3 s here, and these clients use DRF tokens.
            user = users.objects.create_user(username=f"u-{role}", password=None)
            if role != "norole":
                user.groups.add(Group.objects.get(name=role))
            self.users[role] = user
            self.tokens[role] = Token.objects.create(user=user).key
        self.node, self.node_token = make_node("matrix-node")

    def __call__(self, role: str) -> APIClient:
        client = APIClient()
        if role == "node":
            client.credentials(HTTP_AUTHORIZATION=f"Node {self.node_token}")
        elif role != "anonymous":
            client.credentials(HTTP_AUTHORIZATION=f"Token {self.tokens[role]}")
        return client


@pytest.fixture
def clients(db) -> Clients:
    return Clients()


class SentTasks(list):
    """Stands in for the broker in API tests (the real worker test covers the broker)."""

    class _Result:
        def __init__(self, n: int):
            self.id = f"task-{n}"

    def send_task(self, name, kwargs=None, queue=None, **_):
        self.append({"name": name, "kwargs": kwargs, "queue": queue})
        return self._Result(len(self))


@pytest.fixture
def sent_tasks(monkeypatch) -> SentTasks:
    from controlplane.celery import app

    spy = SentTasks()
    monkeypatch.setattr(app, "send_task", spy.send_task)
    return spy
