"""Telemetry on the test database: ingest (node tokens, idempotency, field errors), bucketed
range queries, retention and downsampling (the Prometheus exposition: test_cp_metrics.py)."""

from __future__ import annotations

import json
import math
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from rest_framework.test import APIClient

from controlplane.models import Alert, Node, NodeEvent, TelemetrySample
from controlplane.services import telemetry
from tests.integration.cp_support import (
    INGEST,
    ROLES,
    make_node,
    sample,
    stored_sample,
)

pytestmark = pytest.mark.django_db
# Just after midnight (UTC) two days ago: buckets are predictable, and the samples are within
# the telemetry kept (ingest refuses older ones).
T0 = (time.time() // 86400 - 2) * 86400.0 + 40  # 40 s into a minute, like 1_780_000_000


def node_client(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Node {token}")
    return client


def post(client: APIClient, body) -> tuple[int, dict]:
    # Raw JSON text, so NaN and Infinity literals reach the server as a node would send them.
    response = client.post(INGEST, json.dumps(body), content_type="application/json")
    return response.status_code, response.json()


@pytest.mark.parametrize("role", ROLES)
def test_only_a_node_token_may_ingest(role, clients):
    body = {"node": "matrix-node", "samples": [sample(0)]}
    code, _ = post(clients(role), body)
    assert code == (200 if role == "node" else 401)
    assert TelemetrySample.objects.count() == (1 if role == "node" else 0)


def test_ingest_is_idempotent_on_node_and_seq():
    node, token = make_node("edge-1")
    client = node_client(token)
    rank = {"kind": "rank_change", "ts": T0, "detail": {"table": "user", "from": 4, "to": 6}}
    first = [sample(0, T0), sample(1, T0 + 1, events=[rank])]
    assert post(client, {"node": "edge-1", "samples": first}) == (
        200,
        {"accepted": 2, "duplicate": 0, "events": 1},
    )
    # A resend after a lost reply: the old samples are duplicates, the new one is accepted.
    again = [*first, sample(2, T0 + 2)]
    assert post(client, {"node": "edge-1", "samples": again}) == (
        200,
        {"accepted": 1, "duplicate": 2, "events": 0},
    )
    assert sorted(TelemetrySample.objects.values_list("seq", flat=True)) == [0, 1, 2]
    (event,) = NodeEvent.objects.all()
    assert event.kind == "rank_change" and event.detail["to"] == 6 and event.seq == 1
    node.refresh_from_db()
    assert node.status == "online" and node.last_seen is not None


def test_malformed_and_non_finite_values_are_field_errors_and_nothing_is_stored():
    _, token = make_node("edge-1")
    bad = sample(1, T0, p99_ms=math.inf, qps=-1.0, auc=math.nan, throttle="sleepy")
    code, errors = post(node_client(token), {"node": "edge-1", "samples": [sample(0, T0), bad]})
    assert code == 400
    assert errors == {
        "samples[1].p99_ms": ["Must be a finite number."],
        "samples[1].qps": ["Must be >= 0.0 and <= 1000000000.0."],
        "samples[1].auc": ["Must be a finite number."],
        "samples[1].throttle": ["Must be one of running, throttled, paused."],
    }
    assert TelemetrySample.objects.count() == 0  # a batch is accepted whole or not at all


def test_a_token_cannot_send_another_nodes_telemetry():
    make_node("edge-1")
    _, token2 = make_node("edge-2")
    code, body = post(node_client(token2), {"node": "edge-1", "samples": [sample(0)]})
    assert code == 403 and "edge-2" in body["detail"]
    assert TelemetrySample.objects.count() == 0
    code, _ = post(node_client("not-a-token"), {"node": "edge-1", "samples": [sample(0)]})
    assert code == 401


def test_a_node_reporting_again_resolves_its_node_down_alert():
    node, token = make_node("edge-1")
    node.status = Node.Status.DOWN
    node.save()
    alert = Alert.objects.create(
        node=node, kind="node_down", severity="critical", message="x", raised_at=node.created
    )
    assert post(node_client(token), {"node": "edge-1", "samples": [sample(0)]})[0] == 200
    alert.refresh_from_db()
    node.refresh_from_db()
    assert alert.resolved_at is not None and node.status == "online"


def _ingest_series(node: Node, seconds: int, start: float = T0) -> None:
    """One sample per second; p99 rises by 1 ms per second, so bucket stats are predictable."""
    rows = [
        stored_sample(
            node,
            i,
            datetime.fromtimestamp(start + i, tz=UTC),
            p99_ms=float(i),
            tables={"user": {"rank": i % 8, "memory_bytes": 64, "memory_pct": 1.0}},
        )
        for i in range(seconds)
    ]
    TelemetrySample.objects.bulk_create(rows)


def test_range_query_buckets_server_side(clients):
    node, _ = make_node("edge-1")
    _ingest_series(node, 120)
    response = clients("viewer").get(
        "/api/telemetry/",
        {
            "node": "edge-1",
            "start": datetime.fromtimestamp(T0, tz=UTC).isoformat(),
            "end": datetime.fromtimestamp(T0 + 120, tz=UTC).isoformat(),
            "bucket_s": 60,
            "metrics": "p99_ms,qps",
        },
    )
    assert response.status_code == 200, response.data
    series = response.json()
    first_bucket = int(T0 // 60) * 60
    assert series["t"] == [first_bucket, first_bucket + 60, first_bucket + 120]
    assert sum(series["n"]) == 120
    head = int(first_bucket + 60 - T0)  # samples in the first, partial bucket
    assert series["n"] == [head, 60, 60 - head]
    assert series["max"]["p99_ms"][0] == head - 1
    assert series["avg"]["p99_ms"][0] == pytest.approx((head - 1) / 2)
    assert series["avg"]["qps"] == [100.0, 100.0, 100.0]
    assert set(series["avg"]) == set(series["max"]) == {"p99_ms", "qps"}


def test_range_query_columns_hold_nulls_and_may_be_empty(clients):
    node, _ = make_node("edge-1")
    _ingest_series(node, 30)  # auc never reported
    params = {
        "node": "edge-1",
        "start": datetime.fromtimestamp(T0, tz=UTC).isoformat(),
        "end": datetime.fromtimestamp(T0 + 30, tz=UTC).isoformat(),
        "bucket_s": 10,
        "metrics": "auc,p99_ms",
    }
    series = clients("viewer").get("/api/telemetry/", params).json()
    assert series["n"] == [10, 10, 10]  # T0 is a multiple of 10
    assert series["avg"]["auc"] == series["max"]["auc"] == [None] * len(series["t"])
    assert len(series["avg"]["p99_ms"]) == len(series["t"])
    params["start"] = datetime.fromtimestamp(T0 - 3600, tz=UTC).isoformat()
    params["end"] = datetime.fromtimestamp(T0 - 60, tz=UTC).isoformat()
    empty = clients("viewer").get("/api/telemetry/", params).json()
    assert empty["t"] == empty["n"] == []
    assert empty["avg"] == empty["max"] == {"auc": [], "p99_ms": []}
    with pytest.raises(ValueError, match="not telemetry metrics"):  # the names go into the SQL
        telemetry.series(node, datetime.fromtimestamp(T0, tz=UTC), datetime.now(UTC), ['auc"'])


def test_range_query_errors_are_field_errors(clients):
    make_node("edge-1")
    start = datetime.fromtimestamp(T0, tz=UTC)
    viewer = clients("viewer")
    params = {"node": "edge-1", "start": start.isoformat(), "end": start.isoformat()}
    assert viewer.get("/api/telemetry/", params).data == {"end": ["Must be after start."]}
    params["end"] = (start + timedelta(days=30)).isoformat()
    params["bucket_s"] = 1
    assert "bucket_s" in viewer.get("/api/telemetry/", params).data
    params["metrics"] = "p99_ms,bogus"
    assert "metrics" in viewer.get("/api/telemetry/", params).data
    del params["metrics"], params["bucket_s"]
    auto = viewer.get("/api/telemetry/", params).data
    assert auto["bucket_s"] == math.ceil(30 * 86400 / telemetry.MAX_POINTS)
    params["node"] = "nope"
    assert "node" in viewer.get("/api/telemetry/", params).data


@override_settings(
    LIVEUPDATE_TELEMETRY_RAW_S=3600,
    LIVEUPDATE_TELEMETRY_BUCKET_S=60,
    LIVEUPDATE_TELEMETRY_KEEP_S=7 * 86400,
)
def test_retention_downsamples_old_raw_samples_and_expires_the_oldest():
    node, _ = make_node("edge-1")
    aligned = (T0 // 60) * 60
    _ingest_series(node, 180, start=aligned)  # three full minutes
    now = datetime.fromtimestamp(aligned + 3600 + 300, tz=UTC)
    before = telemetry.series(node, now - timedelta(days=1), now, ["p99_ms"], 60)
    assert telemetry.downsample(now) == {"folded": 180, "failed": 0}
    rows = list(TelemetrySample.objects.order_by("ts"))
    assert [(r.resolution_s, r.n_samples, r.seq) for r in rows] == [
        (60, 60, 0),
        (60, 60, 60),
        (60, 60, 120),
    ]
    assert [r.p99_ms for r in rows] == [29.5, 89.5, 149.5]
    assert rows[0].tables["user"]["rank"] == 59 % 8  # the bucket's newest sample
    after = telemetry.series(node, now - timedelta(days=1), now, ["p99_ms"], 60)
    assert [after[k] for k in ("t", "n", "avg")] == [before[k] for k in ("t", "n", "avg")]
    assert telemetry.downsample(now)["folded"] == 0  # idempotent: nothing raw is old enough
    later = now + timedelta(days=7)
    assert telemetry.expire(later)["samples"] == 3 and not TelemetrySample.objects.exists()
