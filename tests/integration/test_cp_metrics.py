"""GET /metrics (prometheus-client, read from the database at scrape time) and the provisioned
Grafana dashboard: every metric, label and label value its PromQL selects is one a fleet's
/metrics actually exports."""

from __future__ import annotations

import json
import re
import time

import pytest
from django.test import override_settings
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families
from rest_framework.test import APIClient

from controlplane.models import Alert, Policy
from tests.integration.cp_support import INGEST, duty_cut, make_node, sample
from tests.services import ROOT

pytestmark = pytest.mark.django_db
DASHBOARD = ROOT / "docker" / "grafana" / "dashboards" / "liveupdate-fleet.json"
SELECTOR = re.compile(r"\b(liveupdate_[a-z0-9_]+)\s*(\{[^}]*\})?")
MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"([^"]*)"')
GROUPING = re.compile(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\(([^)]*)\)")


def ingest(node: str, token: str, samples: list[dict]) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {token}")
    response = client.post(INGEST, {"node": node, "samples": samples}, format="json")
    assert response.status_code == 200, response.content


def event(kind: str, ts: float, **detail) -> dict:
    return {"kind": kind, "ts": ts, "detail": detail}


@pytest.fixture
def fleet() -> dict[str, dict]:
    """A LiveUpdate node and its delta-sync baseline as the demo runs them, with the events and
    alerts the dashboard annotates; returns the scraped exposition as {family: samples}."""
    live_policy = Policy.objects.create(name="liveupdate", sla_p99_ms=150.0, memory_budget_pct=2.5)
    base_policy = Policy.objects.create(name="delta-sync", mode="delta_sync")
    live, live_token = make_node("edge-live", policy=live_policy)
    _, base_token = make_node("edge-baseline", policy=base_policy)
    make_node("edge-new")
    now = time.time()
    live_events = [event("policy", now - 3, version=1), event("snapshot", now - 2, restored="s0")]
    live_events += [
        event("rebase", now - 1, checkpoint="base"),
        event("snapshot", now, snapshot="s1"),
    ]
    ingest("edge-live", live_token, [sample(0, now, p99_ms=12.5, events=live_events)])
    base = sample(0, now, freshness_lag_s=None, events=[event("sync", now - 4, rows=10)])
    ingest("edge-baseline", base_token, [base])
    Alert.objects.create(
        node=live,
        kind="sla_violation",
        severity="warning",
        message="P99 over",
        raised_at=timezone.now(),
    )
    Alert.objects.create(
        node=live,
        kind="rollback",
        severity="critical",
        message="AUC under the baseline",
        raised_at=timezone.now(),
    )
    duty_cut(live, 0.25)
    response = APIClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return {f.name: f.samples for f in text_string_to_metric_families(response.content.decode())}


def values(families: dict, name: str) -> dict[tuple, float]:
    return {tuple(sorted(s.labels.items())): s.value for s in families[name]}


def test_the_exposition_reads_the_fleet_from_the_database(fleet):
    assert values(fleet, "liveupdate_node_up") == {
        (("node", "edge-baseline"),): 1.0,
        (("node", "edge-live"),): 1.0,
        (("node", "edge-new"),): 0.0,
    }
    assert values(fleet, "liveupdate_node_p99_ms")[(("node", "edge-live"),)] == 12.5
    assert values(fleet, "liveupdate_node_sla_p99_ms")[(("node", "edge-live"),)] == 150.0
    assert values(fleet, "liveupdate_node_memory_budget_pct")[(("node", "edge-live"),)] == 2.5
    info = {dict(k)["node"]: dict(k)["mode"] for k in values(fleet, "liveupdate_node_info")}
    assert info == {"edge-live": "liveupdate", "edge-baseline": "delta_sync", "edge-new": ""}
    # a delta-sync node reports no freshness lag: no sample rather than a made-up one
    assert {dict(k)["node"] for k in values(fleet, "liveupdate_node_freshness_lag_s")} == {
        "edge-live"
    }
    last = {
        (dict(k)["node"], dict(k)["kind"]): ts
        for k, ts in values(fleet, "liveupdate_node_last_event_timestamp_seconds").items()
    }
    # a restore is a snapshot event too: the newest snapshot saved is newer than the restore
    assert last[("edge-live", "snapshot")] - last[("edge-live", "restore")] == pytest.approx(
        2, abs=0.01
    )
    assert set(last) == {("edge-live", k) for k in ("policy", "snapshot", "rebase", "restore")} | {
        ("edge-baseline", "sync")
    }
    assert (
        values(fleet, "liveupdate_node_table_rank")[(("node", "edge-live"), ("table", "user"))]
        == 4.0
    )
    throttle = values(fleet, "liveupdate_node_trainer_throttle")
    assert throttle[(("node", "edge-live"), ("state", "running"))] == 1.0
    assert values(fleet, "liveupdate_open_alerts")[(("kind", "sla_violation"),)] == 1.0
    assert values(fleet, "liveupdate_open_alerts")[(("kind", "node_down"),)] == 0.0
    alerts = values(fleet, "liveupdate_node_open_alerts")
    assert alerts == {
        (("kind", "rollback"), ("node", "edge-live")): 1.0,
        (("kind", "sla_violation"), ("node", "edge-live")): 1.0,
    }
    key = (("field", "max_trainer_duty"), ("node", "edge-live"))
    assert values(fleet, "liveupdate_node_override") == {key: 0.25}
    since = values(fleet, "liveupdate_node_override_since_timestamp_seconds")[key]
    assert abs(since - time.time()) < 60


def test_the_metrics_token_is_required_when_set(fleet):
    with override_settings(LIVEUPDATE_METRICS_TOKEN="s3cret"):
        assert APIClient().get("/metrics").status_code == 401
        assert APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
        ok = APIClient().get("/metrics", HTTP_AUTHORIZATION="Bearer s3cret")
        assert ok.status_code == 200


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and annotation of a Grafana dashboard."""
    queries = [
        (f"annotation {a['name']}", a["expr"])
        for a in dashboard["annotations"]["list"]
        if "expr" in a
    ]
    for panel in dashboard["panels"]:
        queries += [(f"panel {panel['title']}", t["expr"]) for t in panel.get("targets", [])]
    return queries


def query_problems(where: str, expr: str, families: dict) -> list[str]:
    """What in one PromQL query selects nothing in ``families`` (the scraped exposition)."""
    selectors = SELECTOR.findall(expr)
    if not selectors:
        return [f"{where}: no LiveUpdate metric in {expr!r}"]
    problems, labels_used = [], set()
    for name, matchers in selectors:
        samples = families.get(name)
        if not samples:
            problems.append(f"{where}: {name} is not exported (or has no sample)")
            continue
        labels_used |= {label for s in samples for label in s.labels}
        for label, op, value in MATCHER.findall(matchers):
            seen = {s.labels.get(label) for s in samples} - {None}
            if not seen:
                problems.append(f"{where}: {name} has no label {label}")
            elif op == "=" and value not in seen:
                problems.append(f"{where}: no {name}{{{label}={value!r}}} (values: {sorted(seen)})")
            elif op == "=~" and not any(re.fullmatch(value, v) for v in seen):
                problems.append(
                    f"{where}: {label}=~{value!r} matches no {name} (values: {sorted(seen)})"
                )
    for group in GROUPING.findall(expr):
        for label in filter(None, (x.strip() for x in group.split(","))):
            if label not in labels_used:
                problems.append(f"{where}: no metric of the query has the label {label}")
    return problems


def test_every_query_of_the_grafana_dashboard_selects_exported_metrics(fleet):
    dashboard = json.loads(DASHBOARD.read_text())
    queries = dashboard_queries(dashboard)
    assert len(queries) >= 10  # the panels' and annotations' queries were all found
    assert [p for where, expr in queries for p in query_problems(where, expr, fleet)] == []
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("auc gap", "freshness", "p99 vs sla", "memory vs budget"):
        assert topic in titles
    names = " ".join(a["name"] for a in dashboard["annotations"]["list"]).lower()
    assert "override" in names and "rollback" in names


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("liveupdate_node_p99_seconds", "is not exported"),
        ('liveupdate_node_last_event_timestamp_seconds{kind="synced"}', "no liveupdate_node_last"),
        ('liveupdate_node_p99_ms{arm="live"}', "has no label arm"),
        (
            'changes(liveupdate_node_last_event_timestamp_seconds{kind=~"restored"}[1m])',
            "matches no",
        ),
        ("sum by (arm) (liveupdate_open_alerts)", "has the label arm"),
        ("time()", "no LiveUpdate metric"),
    ],
)
def test_the_dashboard_check_finds_a_query_that_selects_nothing(fleet, expr, problem):
    problems = query_problems("panel X", expr, fleet)
    assert len(problems) == 1 and problem in problems[0]
