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
    # 2,000 buckets of 1,296 s from T0 (not a multiple of 1,296 s) would touch 2,001
    assert auto["bucket_s"] == math.ceil(30 * 86400 / (telemetry.MAX_POINTS - 1))
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


def _range(clients, **params):
    start = datetime.fromtimestamp(T0, tz=UTC)
    query = {"node": "edge-1", "start": start.isoformat(), "metrics": "p99_ms"} | params
    query.setdefault("end", (start + timedelta(seconds=120)).isoformat())
    return clients("viewer").get("/api/telemetry/", query)


def test_max_points_downsamples_to_known_buckets(clients):
    node, _ = make_node("edge-1")
    _ingest_series(node, 120)  # p99_ms = 0, 1, ..., 119 one a second from T0
    # T0 is 40 s past a multiple of 60 and of 40 (86,400 = 40 * 2,160): 30 s buckets would
    # touch 5 (a partial first and last), so the width is that of 3 buckets.
    series = _range(clients, max_points=4).json()
    assert series["bucket_s"] == 40
    assert series["t"] == [T0, T0 + 40, T0 + 80]
    assert series["n"] == [40, 40, 40]
    assert series["avg"]["p99_ms"] == [19.5, 59.5, 99.5]
    assert series["max"]["p99_ms"] == [39.0, 79.0, 119.0]
    # 60 buckets of 2 s fit 60 points exactly (T0 is even)
    assert len(_range(clients, max_points=60).json()["t"]) == 60
    assert len(_range(clients, max_points=59).json()["t"]) <= 59
    full = _range(clients).json()  # the default: at most MAX_POINTS, here every second
    assert full["bucket_s"] == 1 and full["max"]["p99_ms"] == [float(i) for i in range(120)]


@pytest.mark.parametrize("seconds", [1, 59, 60, 61, 3599, 3600, 86400, 30 * 86400])
@pytest.mark.parametrize("max_points", [2, 3, 7, 600, telemetry.MAX_POINTS])
@pytest.mark.parametrize("offset", [0.0, 0.25, 40.0, 59.5])
def test_a_range_never_has_more_than_max_points(seconds, max_points, offset):
    start = datetime.fromtimestamp(T0 + offset, tz=UTC)
    end = start + timedelta(seconds=seconds)
    width = telemetry.bucket_width(start, end, None, max_points)
    assert telemetry.bucket_count(start.timestamp(), end.timestamp(), width) <= max_points
    # the finest width that can fit, or (a partial bucket too many) that of max_points - 1
    assert width in {math.ceil(seconds / max_points), math.ceil(seconds / (max_points - 1))}


@pytest.mark.parametrize("bad", ["0", "1", "2001", "-3", "2.5", "many", "10" * 30])
def test_max_points_out_of_bounds_is_a_400(clients, bad):
    make_node("edge-1")
    response = _range(clients, max_points=bad)
    assert response.status_code == 400 and set(response.json()) == {"max_points"}


def test_a_bucket_giving_more_than_max_points_is_a_400(clients):
    make_node("edge-1")
    response = _range(clients, max_points=10, bucket_s=6)  # 120 s: 20 buckets
    assert response.status_code == 400
    # 12 s buckets would touch 11 (T0 is 4 s past a multiple of 12); 14 s ones touch 10
    assert response.json() == {"bucket_s": ["Over 10 points: bucket_s=14 fits."]}
    assert _range(clients, max_points=10, bucket_s=14).status_code == 200


def test_infinite_and_nan_values_stored_before_the_bounds_read_as_null(clients):
    node, _ = make_node("edge-1")
    _ingest_series(node, 20)
    TelemetrySample.objects.filter(seq__lt=10).update(p99_ms=math.inf)
    TelemetrySample.objects.filter(seq=15).update(p99_ms=math.nan)
    series = _range(clients, bucket_s=10).json()  # T0 is a multiple of 10
    assert series["avg"]["p99_ms"] == [None, None]
    assert series["max"]["p99_ms"] == [None, None]  # NaN is the largest float to PostgreSQL
    TelemetrySample.objects.filter(seq=15).update(p99_ms=-math.inf)
    series = _range(clients, bucket_s=10).json()
    assert series["max"]["p99_ms"] == [None, 19.0]


def test_a_range_query_is_two_queries(clients, django_assert_num_queries):
    node, _ = make_node("edge-1")
    _ingest_series(node, 120)
    clients("viewer")  # the user made before queries are counted
    # the token, the user's groups, the node by name, the buckets
    with django_assert_num_queries(4):
        assert _range(clients, max_points=30).status_code == 200


def test_a_sample_a_microsecond_before_a_bucket_boundary_stays_in_the_earlier_bucket(clients):
    node, _ = make_node("edge-1")
    _ingest_series(node, 2, start=T0 + 9.999999)  # T0 is a multiple of 10
    series = _range(clients, bucket_s=10).json()
    assert series["t"] == [T0, T0 + 10] and series["n"] == [1, 1]


def test_sqlite_buckets_and_nulls_match_postgresqls():
    """The embedded mode's SQL (SQLite, as Django stores datetimes there) on the cases above."""
    import sqlite3

    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE s (ts TEXT, v REAL)")
    rows = [("2026-05-28 20:26:49.999999", 1.0), ("2026-05-28 20:26:50", math.inf)]
    db.executemany("INSERT INTO s VALUES (?, ?)", rows + [("2026-05-28 20:26:51", -math.inf)])
    sql = (
        f"SELECT {telemetry.bucket_sql('sqlite', 'ts')} * ?, COUNT(*),"
        f" {telemetry.finite_sql('sqlite', 'MAX(v)')}, {telemetry.finite_sql('sqlite', 'MIN(v)')}"
        " FROM s GROUP BY 1 ORDER BY 1"
    )
    # Django's format-style parameters to sqlite3's qmark style, as its SQLite backend does
    sql = sql.replace("%%", "\0").replace("%s", "?").replace("\0", "%")
    first = int(datetime(2026, 5, 28, 20, 26, 49, tzinfo=UTC).timestamp())
    assert db.execute(sql, [1, 1]).fetchall() == [
        (first, 1, 1.0, 1.0),  # 49.999999 s stays in second 49
        (first + 1, 1, None, None),
        (first + 2, 1, None, None),
    ]
