"""The REST API on the test database (PostgreSQL under `make test`): CRUD of every resource and
the whole permission matrix (anonymous, no role, viewer, operator, admin, node token), as
shared test mixins in the spirit of NetBox's APIViewTestCases."""

from __future__ import annotations

import time

import pytest

from controlplane.models import (
    Alert,
    ExperimentRun,
    ModelCheckpoint,
    Node,
    NodeAction,
    NodeEvent,
    Policy,
    PolicyVersion,
)
from controlplane.services.policies import save_policy
from controlplane.tokens import hash_api_token
from tests.integration.cp_support import (
    ROLES,
    expected_status,
    make_node,
    stored_sample,
)

pytestmark = pytest.mark.django_db

CHECKSUM = "sha256:" + "ab" * 32


def results_json() -> dict:
    strategy = {
        "mean_auc": 0.71,
        "auc_per_window": [0.70, 0.72],
        "mean_logloss": 0.5,
        "bytes_moved": 1024,
        "cpu_seconds": 3.5,
        "peak_memory_overhead_pct": 1.2,
        "mean_staleness_s": 0.9,
    }
    return {
        "dataset": {"name": "movielens_100k"},
        "windows": [{"start": 0}, {"start": 60}],
        "strategies": {"liveupdate": strategy, "delta_sync": dict(strategy, mean_auc=0.70)},
        "claims": [],
    }


class ReadCases:
    """list and retrieve: viewer and up; anonymous 401; no role and node tokens 403."""

    url: str
    lookup = "id"  # the field that names an object in its URL

    def make(self):
        raise NotImplementedError

    def key(self, obj) -> str:
        return str(getattr(obj, "pk" if self.lookup == "id" else self.lookup))

    @pytest.mark.parametrize("role", ROLES)
    def test_list(self, role, clients):
        obj = self.make()
        response = clients(role).get(self.url)
        assert response.status_code == expected_status(role, "viewer", 200), response.data
        if response.status_code == 200:
            assert response.data["count"] >= 1
            assert self.key(obj) in {str(r[self.lookup]) for r in response.data["results"]}

    @pytest.mark.parametrize("role", ROLES)
    def test_retrieve(self, role, clients):
        obj = self.make()
        response = clients(role).get(f"{self.url}{self.key(obj)}/")
        assert response.status_code == expected_status(role, "viewer", 200), response.data
        if response.status_code == 200:
            assert response.data["id"] == obj.pk

    def test_list_is_paginated(self, clients):
        self.make()
        response = clients("viewer").get(self.url, {"limit": 1})
        assert response.status_code == 200 and len(response.data["results"]) == 1


class ReadOnlyCases(ReadCases):
    """Records the system writes: nobody may create them through the API."""

    @pytest.mark.parametrize("role", ROLES)
    def test_create_is_not_allowed(self, role, clients):
        model = type(self.make())
        before = model._default_manager.count()
        response = clients(role).post(self.url, {}, format="json")
        assert response.status_code == expected_status(role, "admin", 405)
        assert model._default_manager.count() == before


class CrudCases(ReadCases):
    """create, update and delete: admin only."""

    model: type

    def create_data(self) -> dict:
        raise NotImplementedError

    def update_data(self) -> dict:
        raise NotImplementedError

    @pytest.mark.parametrize("role", ROLES)
    def test_create(self, role, clients):
        data = self.create_data()
        response = clients(role).post(self.url, data, format="json")
        assert response.status_code == expected_status(role, "admin", 201), response.data
        exists = self.model.objects.filter(name=data["name"]).exists()
        assert exists == (response.status_code == 201)

    @pytest.mark.parametrize("role", ROLES)
    def test_update(self, role, clients):
        obj = self.make()
        data = self.update_data()
        response = clients(role).patch(f"{self.url}{self.key(obj)}/", data, format="json")
        assert response.status_code == expected_status(role, "admin", 200), response.data
        obj.refresh_from_db()
        changed = all(getattr(obj, k) == v for k, v in data.items())
        assert changed == (response.status_code == 200)

    @pytest.mark.parametrize("role", ROLES)
    def test_delete(self, role, clients):
        obj = self.make()
        response = clients(role).delete(f"{self.url}{self.key(obj)}/")
        assert response.status_code == expected_status(role, "admin", 204)
        assert self.model.objects.filter(pk=obj.pk).exists() == (response.status_code != 204)


class TestPolicies(CrudCases):
    url, model = "/api/policies/", Policy

    def make(self):
        policy = Policy(name="gold", sla_p99_ms=30.0)
        save_policy(policy, actor="test")
        return policy

    def create_data(self):
        return {"name": "silver", "r_min": 2, "r_max": 8, "tau": 0.95, "reason": "new tier"}

    def update_data(self):
        return {"tau": 0.8}

    def test_every_bound_is_a_field_error(self, clients):
        response = clients("admin").post(
            self.url,
            {"name": "bad", "tau": 1.5, "r_min": 8, "r_max": 4, "memory_budget_pct": 0},
            format="json",
        )
        assert response.status_code == 400
        assert response.data == {
            "tau": ["Must be >= 0.5 and <= 1.0."],
            "r_max": ["Must be >= r_min."],
            "memory_budget_pct": ["Must be > 0.0 and <= 10.0."],
        }
        assert not Policy.objects.filter(name="bad").exists()

    def test_top_tuning_is_bounded_and_off_by_default(self, clients):
        admin = clients("admin")
        for field, value, error in (
            ("lr_top", 1.5, "Must be >= 0.0 and <= 1.0."),
            ("lr_top", -0.1, "Must be >= 0.0 and <= 1.0."),
            ("top_layers", 0, "Must be >= 1 and <= 16."),
            ("top_layers", 17, "Must be >= 1 and <= 16."),
        ):
            response = admin.post(self.url, {"name": "bad", field: value}, format="json")
            assert response.status_code == 400 and response.data == {field: [error]}
        response = admin.post(self.url, {"name": "plain"}, format="json")
        assert response.status_code == 201
        assert response.data["lr_top"] == 0.0 and response.data["top_layers"] == 1
        tuned = {"name": "tuned", "lr_top": 0.05, "top_layers": 2}
        response = admin.post(self.url, tuned, format="json")
        assert response.status_code == 201
        node_policy = Policy.objects.get(name="tuned").node_policy()
        assert (node_policy.lr_top, node_policy.top_layers) == (0.05, 2)

    def test_history_records_who_what_and_why(self, clients):
        policy = self.make()
        response = clients("admin").patch(
            f"{self.url}{policy.pk}/", {"sla_p99_ms": 25.0, "reason": "tighter SLA"}, format="json"
        )
        assert response.status_code == 200 and response.data["version"] == 2
        latest = PolicyVersion.objects.get(policy=policy, version=2)
        assert latest.actor == "user:u-admin" and latest.reason == "tighter SLA"
        assert latest.changes == {"sla_p99_ms": [30.0, 25.0]}
        listed = clients("viewer").get("/api/policy-versions/", {"policy": policy.pk})
        assert [v["version"] for v in listed.data["results"]] == [2, 1]

    def test_a_policy_in_use_cannot_be_deleted(self, clients):
        policy = self.make()
        make_node("edge-9", policy=policy)
        response = clients("admin").delete(f"{self.url}{policy.pk}/")
        assert response.status_code == 409 and "edge-9" in response.data["detail"]


class TestNodes(CrudCases):
    url, model, lookup = "/api/nodes/", Node, "name"

    def make(self):
        return make_node("edge-1", host="10.0.0.1")[0]

    def create_data(self):
        return {"name": "edge-2", "host": "10.0.0.2", "topology": {"numa_nodes": 1}}

    def update_data(self):
        return {"host": "10.0.0.3"}

    def test_create_returns_the_token_once_and_stores_only_its_hash(self, clients):
        response = clients("admin").post(self.url, self.create_data(), format="json")
        token = response.data["token"]
        assert token and len(token) >= 40
        node = self.model.objects.get(name="edge-2")
        assert token not in node.token_hash
        again = clients("admin").get(f"{self.url}edge-2/")
        assert again.data["token"] is None
        ingest = clients("anonymous")
        ingest.credentials(HTTP_AUTHORIZATION=f"Node {token}")
        batch = {"node": "edge-2", "samples": []}
        assert ingest.post("/api/telemetry/ingest/", batch, format="json").status_code == 400

    def test_list_shows_each_nodes_newest_sample_in_constant_queries(
        self, clients, django_assert_max_num_queries
    ):
        from datetime import UTC, datetime

        admin = clients("admin")
        for count in (2, 6):
            for i in range(count):
                node = Node.objects.filter(name=f"n-{i}").first() or make_node(f"n-{i}")[0]
                for seq in (10 * count, 10 * count + 1):
                    at = datetime.fromtimestamp(1_780_000_000 + seq, tz=UTC)
                    stored_sample(node, seq, at, qps=float(seq)).save()
            # the token and the user's groups, the count, the page (each node's newest sample
            # joined), its overrides: the same five for 2 nodes as for 6
            with django_assert_max_num_queries(5):
                rows = admin.get(self.url).data["results"]
            latest = {r["name"]: r["latest"] for r in rows}
            assert {n: s["seq"] for n, s in latest.items() if s} == {
                f"n-{i}": 10 * count + 1 for i in range(count)
            }
        assert admin.get(f"{self.url}n-0/").data["latest"]["qps"] == 61.0

    def test_detail_reads_the_newest_sample_in_the_node_query(
        self, clients, django_assert_num_queries
    ):
        from controlplane.models import TelemetrySample
        from tests.integration.cp_support import INGEST, sample

        node, token = make_node("edge-1")
        admin = clients("admin")
        # the token and the user's groups, the node (its newest sample joined), its overrides
        with django_assert_num_queries(4):
            assert admin.get(f"{self.url}edge-1/").data["latest"] is None
        ts = float(int(time.time()) - 10)
        table = {"user": {"rank": 3, "memory_bytes": 64, "memory_pct": 0.5}}
        batch = [sample(1, ts - 1, qps=5.0), sample(2, ts, qps=7.0)]
        batch[1].update(throttle="paused", tables=table, cpu_per_core=[12.5])
        posted = clients("anonymous")
        posted.credentials(HTTP_AUTHORIZATION=f"Node {token}")
        body = {"node": "edge-1", "samples": batch}
        assert posted.post(INGEST, body, format="json").status_code == 200
        with django_assert_num_queries(4):  # no query of its own for the sample
            latest = admin.get(f"{self.url}edge-1/").data["latest"]
        payload = ("seq", "ts", *TelemetrySample.METRICS, "throttle", "tables", "cpu_per_core")
        assert list(latest) == list(payload)  # the websocket's telemetry sample shape
        assert (latest["seq"], latest["ts"], latest["qps"]) == (2, ts, 7.0)
        assert latest["throttle"] == "paused" and latest["tables"] == table
        assert latest["cpu_per_core"] == [12.5]
        created = admin.post(self.url, self.create_data(), format="json").data
        assert created["latest"] is None and created["token"]

    def test_bad_names_are_field_errors(self, clients):
        response = clients("admin").post(self.url, {"name": "Bad Name"}, format="json")
        assert response.status_code == 400 and list(response.data) == ["name"]

    @pytest.mark.parametrize("role", ROLES)
    def test_rotate_token(self, role, clients):
        node = self.make()
        old = node.token_hash
        response = clients(role).post(f"{self.url}{node.name}/rotate_token/")
        assert response.status_code == expected_status(role, "admin", 200)
        node.refresh_from_db()
        assert (node.token_hash != old) == (response.status_code == 200)


class TestNodeActions:
    """pause, resume, snapshot, apply_policy, rebase: operator and up; sent to node.<name>."""

    @pytest.mark.parametrize("role", ROLES)
    @pytest.mark.parametrize("action", ["pause", "resume", "snapshot"])
    def test_simple_actions(self, role, action, clients, sent_tasks):
        node, _ = make_node("edge-1")
        response = clients(role).post(f"/api/nodes/edge-1/{action}/")
        assert response.status_code == expected_status(role, "operator", 202), response.data
        if response.status_code == 202:
            assert sent_tasks == [
                {"name": f"nodeworker.{action}", "kwargs": {}, "queue": "node.edge-1"}
            ]
            record = NodeAction.objects.get(node=node)
            assert record.state == "sent" and record.actor == f"user:u-{role}"
            assert response.data["task_id"] == record.task_id == "task-1"
        else:
            assert sent_tasks == [] and not NodeAction.objects.exists()

    @pytest.mark.parametrize("role", ["viewer", "operator", "admin"])
    def test_apply_policy_assigns_and_sends_the_validated_policy(self, role, clients, sent_tasks):
        node, _ = make_node("edge-1")
        policy = Policy(name="gold", tau=0.95)
        save_policy(policy, actor="test")
        response = clients(role).post(
            "/api/nodes/edge-1/apply_policy/", {"policy": policy.pk}, format="json"
        )
        assert response.status_code == expected_status(role, "operator", 202)
        node.refresh_from_db()
        if response.status_code == 202:
            (task,) = sent_tasks
            assert task["name"] == "nodeworker.apply_policy" and task["queue"] == "node.edge-1"
            assert task["kwargs"]["policy"]["tau"] == 0.95 and task["kwargs"]["version"] == 1
            assert node.policy == policy and node.applied_policy_version == 1
        else:
            assert node.policy is None and sent_tasks == []

    def test_apply_policy_without_a_policy_is_a_clear_error(self, clients, sent_tasks):
        make_node("edge-1")
        response = clients("operator").post("/api/nodes/edge-1/apply_policy/", {}, format="json")
        assert response.status_code == 400
        assert response.data == {"non_field_errors": ["The node has no policy to apply."]}

    def test_rebase_sends_the_checkpoint(self, clients, sent_tasks):
        make_node("edge-1")
        ckpt = ModelCheckpoint.objects.create(name="base-1", location="/m/1.pt", checksum=CHECKSUM)
        response = clients("operator").post(
            "/api/nodes/edge-1/rebase/", {"checkpoint": ckpt.pk}, format="json"
        )
        assert response.status_code == 202
        assert sent_tasks[0]["kwargs"] == {
            "checkpoint": {"name": "base-1", "location": "/m/1.pt", "checksum": CHECKSUM}
        }
        missing = clients("operator").post("/api/nodes/edge-1/rebase/", {}, format="json")
        assert missing.status_code == 400 and "checkpoint" in missing.data

    def test_a_broker_failure_is_recorded(self, clients, monkeypatch):
        from controlplane.celery import app

        def refuse(*args, **kwargs):
            raise ConnectionError("broker unreachable")

        monkeypatch.setattr(app, "send_task", refuse)
        make_node("edge-1")
        response = clients("operator").post("/api/nodes/edge-1/pause/")
        assert response.status_code == 503
        assert response.data["state"] == "failed" and "broker unreachable" in response.data["error"]


class TestCheckpoints(CrudCases):
    url, model = "/api/checkpoints/", ModelCheckpoint

    def make(self):
        return ModelCheckpoint.objects.create(name="base-1", location="/m/1.pt", checksum=CHECKSUM)

    def create_data(self):
        return {"name": "base-2", "location": "s3://models/2.pt", "checksum": CHECKSUM}

    def update_data(self):
        return {"notes": "verified"}

    def test_checksum_and_size_are_validated(self, clients):
        response = clients("admin").post(
            self.url,
            {"name": "x", "location": "/x", "checksum": "md5:123", "size_bytes": -1},
            format="json",
        )
        assert response.status_code == 400 and set(response.data) == {"checksum", "size_bytes"}

    @pytest.mark.parametrize("role", ROLES)
    def test_roll_out(self, role, clients):
        ckpt = self.make()
        response = clients(role).post(f"{self.url}{ckpt.pk}/roll_out/")
        assert response.status_code == expected_status(role, "admin", 202)
        ckpt.refresh_from_db()
        assert (ckpt.rollout == "pending") == (response.status_code == 202)


class TestExperiments(CrudCases):
    url, model = "/api/experiments/", ExperimentRun

    def make(self):
        return ExperimentRun.objects.create(name="run-1", results=results_json())

    def create_data(self):
        return {"name": "run-2", "parameters": {"rate": 100}, "results": results_json()}

    def update_data(self):
        return {"notes": "baseline"}

    def test_results_schema_is_checked_on_import(self, clients):
        results = results_json()
        del results["windows"]
        del results["strategies"]["liveupdate"]["bytes_moved"]
        results["strategies"]["delta_sync"]["mean_auc"] = "high"
        response = clients("admin").post(
            self.url, {"name": "bad", "results": results}, format="json"
        )
        assert response.status_code == 400
        assert sorted(response.data["results"]) == [
            "strategies.delta_sync.mean_auc: Must be a finite number or null.",
            "strategies.liveupdate.bytes_moved: This field is required.",
            "windows: This field is required.",
        ]

    def test_created_by_and_dataset(self, clients):
        response = clients("admin").post(self.url, self.create_data(), format="json")
        assert response.data["created_by"] == "u-admin"
        assert response.data["dataset"] == "movielens_100k"


class TestAlerts(ReadOnlyCases):
    url = "/api/alerts/"

    def make(self):
        from django.utils import timezone

        node, _ = make_node("edge-1")
        return Alert.objects.create(
            node=node, kind="node_down", severity="critical", message="x", raised_at=timezone.now()
        )

    @pytest.mark.parametrize("role", ROLES)
    def test_acknowledge(self, role, clients):
        alert = self.make()
        response = clients(role).post(f"{self.url}{alert.pk}/acknowledge/")
        assert response.status_code == expected_status(role, "operator", 200)
        alert.refresh_from_db()
        assert (alert.acknowledged_by is not None) == (response.status_code == 200)

    def test_filter_open(self, clients):
        alert = self.make()
        assert clients("viewer").get(self.url, {"open": "true"}).data["count"] == 1
        assert clients("viewer").get(self.url, {"open": "false"}).data["count"] == 0
        assert clients("viewer").get(self.url, {"node": "edge-1"}).data["results"][0]["id"] == (
            alert.pk
        )


class TestEvents(ReadOnlyCases):
    url = "/api/events/"

    def make(self):
        from django.utils import timezone

        node, _ = make_node("edge-1")
        return NodeEvent.objects.create(
            node=node, seq=1, index=0, kind="prune", ts=timezone.now(), detail={"rows": 3}
        )


class TestRankEvents(ReadOnlyCases):
    url = "/api/rank-events/"

    def make(self):
        from django.utils import timezone

        node, _ = make_node("edge-1")
        NodeEvent.objects.create(node=node, seq=1, index=0, kind="prune", ts=timezone.now())
        return NodeEvent.objects.create(
            node=node, seq=1, index=1, kind="rank_change", ts=timezone.now(), detail={"to": 6}
        )

    def test_only_rank_changes(self, clients):
        self.make()
        kinds = {e["kind"] for e in clients("viewer").get(self.url).data["results"]}
        assert kinds == {"rank_change"}


class TestActions(ReadOnlyCases):
    url = "/api/actions/"

    def make(self):
        node, _ = make_node("edge-1")
        return NodeAction.objects.create(node=node, action="pause", actor="test")


class TestPolicyVersions(ReadOnlyCases):
    url = "/api/policy-versions/"

    def make(self):
        return save_policy(Policy(name="gold"), actor="test")


@pytest.mark.parametrize("role", ROLES)
def test_me_reports_the_role(role, clients):
    response = clients(role).get("/api/me/")
    if role == "anonymous":
        assert response.status_code == 401
    else:
        expected = None if role in ("norole", "node") else role
        assert response.status_code == 200 and response.data["role"] == expected


def test_session_auth_needs_csrf_for_writes(clients):
    from rest_framework.test import APIClient

    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(clients.users["admin"])
    assert browser.get("/api/nodes/").status_code == 200
    refused = browser.post("/api/nodes/", {"name": "edge-5"}, format="json")
    assert refused.status_code == 403 and "CSRF" in str(refused.data)


def test_openapi_schema_and_offline_docs(clients):
    schema = clients("anonymous").get("/api/schema/", {"format": "json"})
    assert schema.status_code == 200
    paths = schema.json()["paths"]
    for path in (
        "/api/nodes/{name}/pause/",
        "/api/telemetry/ingest/",
        "/api/telemetry/",
        "/api/policies/",
        "/api/experiments/",
    ):
        assert path in paths
    docs = clients("anonymous").get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "drf_spectacular_sidecar/swagger-ui-dist" in html and "cdn" not in html.lower()


def test_role_groups_exist_after_migrate():
    from django.contrib.auth.models import Group

    assert set(Group.objects.values_list("name", flat=True)) >= {"viewer", "operator", "admin"}


class TestTokenCache:
    """With LIVEUPDATE_TOKEN_CACHE_S set (off by default), verified API tokens are remembered that
    many seconds per server process; changes made in the same process apply at once, others
    within that bound."""

    @pytest.fixture(autouse=True)
    def _cache_on(self, settings):
        settings.LIVEUPDATE_TOKEN_CACHE_S = 5

    def test_revocation_and_role_changes_in_this_process_apply_at_once(self, clients):
        from django.contrib.auth.models import Group
        from rest_framework.authtoken.models import Token

        viewer = clients("viewer")
        assert viewer.get("/api/me/").data["role"] == "viewer"
        user = clients.users["viewer"]
        user.groups.set([Group.objects.get(name="operator")])
        assert viewer.get("/api/me/").data["role"] == "operator"
        Group.objects.get(name="admin").user_set.add(user)
        assert viewer.get("/api/me/").data["role"] == "admin"
        user.is_active = False
        user.save()
        assert viewer.get("/api/me/").status_code == 401
        user.is_active = True
        user.save()
        assert viewer.get("/api/me/").status_code == 200
        Token.objects.filter(user=user).delete()
        assert viewer.get("/api/me/").status_code == 401

    def test_a_change_made_elsewhere_applies_within_the_bound(self, clients, monkeypatch):
        from django.db import connection

        from controlplane import authentication

        now = [1000.0]
        monkeypatch.setattr(authentication.time, "monotonic", lambda: now[0])
        viewer = clients("viewer")
        assert viewer.get("/api/me/").status_code == 200
        with connection.cursor() as cursor:  # as another process would: no signal here
            key = hash_api_token(clients.tokens["viewer"])
            cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [key])
        now[0] += 4.9
        assert viewer.get("/api/me/").status_code == 200  # the lag this cache costs
        now[0] += 0.2
        assert viewer.get("/api/me/").status_code == 401

    def test_zero_looks_every_request_up(self, clients, settings):
        from django.db import connection

        settings.LIVEUPDATE_TOKEN_CACHE_S = 0
        viewer = clients("viewer")
        assert viewer.get("/api/me/").status_code == 200
        with connection.cursor() as cursor:
            key = hash_api_token(clients.tokens["viewer"])
            cursor.execute("DELETE FROM authtoken_token WHERE key = %s", [key])
        assert viewer.get("/api/me/").status_code == 401


def test_pagination_pages_through_the_list_and_bounds_the_limit(clients):
    for i in range(5):
        make_node(f"edge-{i}")  # with the clients' matrix-node: 6 nodes
    admin = clients("admin")
    pages = {}
    for offset in (0, 2, 4, 6, 8):
        response = admin.get("/api/nodes/", {"limit": 2, "offset": offset})
        pages[offset] = (response.data["count"], [n["name"] for n in response.data["results"]])
    assert all(count == 6 for count, _ in pages.values())
    assert sum((names for _, names in pages.values()), []) == sorted(
        Node.objects.values_list("name", flat=True)
    )
    assert pages[6][1] == pages[8][1] == []
    huge = admin.get("/api/nodes/", {"limit": 10**30})  # served as max_limit, not a 500
    assert huge.status_code == 200 and len(huge.data["results"]) == 6


def test_filters_apply_when_given_and_refuse_bad_values(clients):
    for i in range(3):
        make_node(f"edge-{i}", host="rack-a" if i else "rack-b")
    viewer = clients("viewer")
    assert viewer.get("/api/nodes/").data["count"] == 4  # with the clients' matrix-node
    for _ in range(2):  # the second filter set reuses the first one's form class
        assert viewer.get("/api/nodes/", {"host": "rack-a"}).data["count"] == 2
        assert viewer.get("/api/nodes/", {"name": "edge-0", "limit": 5}).data["count"] == 1
    assert viewer.get("/api/nodes/", {"seen_after": "not a time"}).status_code == 400
    assert viewer.get("/api/nodes/edge-0/", {"host": "rack-a"}).status_code == 404
