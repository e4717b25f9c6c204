"""Issue 17's failures of the control plane, each re-run as the issue describes it (on the
PostgreSQL of the test settings): every one must now hold."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta

import pytest
from django.test import override_settings
from django.utils import timezone

from controlplane import tokens
from controlplane.events import telemetry as telemetry_event
from controlplane.models import Alert, Node, TelemetrySample
from controlplane.services import ingest, watchdog
from controlplane.services import telemetry as telemetry_service
from nodeworker.protocol import telemetry as protocol_telemetry
from tests.integration.cp_support import INGEST, feed, make_node, sample

pytestmark = pytest.mark.django_db


def post_raw(clients, text: str | bytes):
    return clients("node").post(INGEST, text, content_type="application/json")


def post(clients, samples: list[dict], **batch):
    body = {"node": clients.node.name, "samples": samples, **batch}
    return post_raw(clients, json.dumps(body))


def test_1_a_new_epoch_numbering_from_0_is_stored_and_a_changed_resend_is_a_409(clients):
    now = time.time()
    old = [sample(s, now - 300 + s) for s in range(300)]
    assert post(clients, old[:200], epoch=11).json()["accepted"] == 200
    assert post(clients, old[200:], epoch=11).json()["accepted"] == 100
    fresh = [sample(s, now - 48 + s, qps=7.0) for s in range(48)]
    assert post(clients, fresh, epoch=12).json() == {"accepted": 48, "duplicate": 0, "events": 0}
    assert TelemetrySample.objects.filter(node=clients.node, epoch=12).count() == 48
    again = post(clients, fresh[:5], epoch=12)
    assert again.json() == {"accepted": 0, "duplicate": 5, "events": 0}
    changed = post(clients, [fresh[5], {**fresh[6], "qps": 8.0}, sample(48, now)], epoch=12)
    assert changed.status_code == 409 and changed.json()["conflicts"] == [6]
    assert TelemetrySample.objects.filter(node=clients.node).count() == 348  # nothing stored


def test_3_a_huge_table_rank_is_refused_and_the_fleet_list_keeps_answering(clients):
    tables = {"user": {"rank": 2**70, "memory_bytes": 1.0, "memory_pct": 0.1}}
    response = post(clients, [sample(0, tables=tables)])
    assert response.status_code == 400 and "samples[0].tables.user.rank" in response.json()
    assert clients("viewer").get("/api/nodes/").status_code == 200


@pytest.mark.parametrize(
    "field,text",
    [
        ("seq", str(2**63)),
        ("seq", "1" + "0" * 400),  # a 401-digit number
        ("ts", "253402300800.0"),  # past year 9999
        ("p99_ms", "1" + "0" * 400),  # in a float field
        ("p99_ms", "1e308"),
        ("qps", "-1e308"),
    ],
)
def test_6_values_that_passed_validation_are_field_errors(clients, field, text):
    valid = sample(0)
    body = json.dumps({"node": clients.node.name, "samples": [valid]})
    value = json.dumps(valid[field])
    response = post_raw(clients, body.replace(f'"{field}": {value}', f'"{field}": {text}', 1))
    assert response.status_code == 400, response.content[:300]
    assert f"samples[0].{field}" in response.json()
    assert not TelemetrySample.objects.exists()


@pytest.mark.parametrize(
    "text",
    [
        "[" * 100_000 + "]" * 100_000,  # past the recursion limit
        '{"node": "matrix-node", "samples": [' + "[" * 40 + "]" * 40 + "]}",
        '{"node": "matrix-node\\u0000", "samples": []}',
        '{"node": "\\ud800", "samples": []}',
    ],
)
def test_6_deep_json_nul_and_lone_surrogates_are_json_400s(clients, text):
    response = post_raw(clients, text)
    assert response.status_code == 400 and response["Content-Type"] == "application/json"
    assert "detail" in response.json()


def test_6_event_times_and_strings_are_bounded(clients):
    bad = [
        {"kind": "qos", "ts": 1e300, "detail": {}},
        {"kind": "qos", "ts": time.time(), "detail": {"deep": [[[[[1]]]]]}},
        {"kind": "qos", "ts": time.time(), "detail": {"n": 2**70}},
    ]
    response = post(clients, [sample(0, events=bad)])
    assert response.status_code == 400
    assert {f"samples[0].events[{i}].{k}" for i, k in enumerate(["ts", *["detail"] * 2])} == set(
        response.json()
    )


def test_7_a_batch_over_the_byte_limit_is_a_json_413(clients):
    samples = [sample(s, cpu_per_core=[50.0] * 4096) for s in range(100)]
    text = json.dumps({"node": clients.node.name, "samples": samples})
    assert len(text) > protocol_telemetry.MAX_BATCH_BYTES
    response = post_raw(clients, text)
    assert response.status_code == 413 and response["Content-Type"] == "application/json"
    assert not TelemetrySample.objects.exists()


def test_8_a_future_sample_is_refused_and_latest_is_by_receipt(clients):
    now = time.time()
    with override_settings(LIVEUPDATE_TELEMETRY_MAX_SKEW_S=300):
        ahead = post(clients, [sample(0, now + 3600, p99_ms=9999.0)])
        assert ahead.status_code == 400 and "ahead" in ahead.json()["samples[0].ts"][0]
        # Within the skew, but ahead of the next sample: the next one received is the latest.
        assert post(clients, [sample(1, now + 200, p99_ms=9999.0)]).status_code == 200
        assert post(clients, [sample(2, now, p99_ms=6.0)]).status_code == 200
    (node,) = clients("viewer").get("/api/nodes/").json()["results"]
    assert node["latest"]["seq"] == 2 and node["latest"]["p99_ms"] == 6.0
    detail = clients("viewer").get(f"/api/nodes/{clients.node.name}/").json()
    assert detail["latest"]["seq"] == 2
    assert telemetry_service.latest_samples()[clients.node.pk].seq == 2


def test_18_unknown_fields_are_neither_stored_nor_broadcast(clients, monkeypatch):
    sent = []
    monkeypatch.setattr(ingest.status, "broadcast_many", sent.extend)
    junky = {**sample(0), "junk": "x" * 100_000}
    junky["tables"]["user"]["extra"] = "y" * 1000
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            ingest.transaction, "on_commit", lambda fn, *a, **k: fn()
        )  # the test's transaction never commits
        assert post(clients, [junky]).status_code == 200
    event = next(message.to_json() for message, _ in sent if message.KIND == "telemetry")
    assert set(event["sample"]) == set(junky) - {"junk", "events"}
    assert set(event["sample"]["tables"]["user"]) == set(protocol_telemetry.TABLE_BOUNDS)
    stored = clients("viewer").get("/api/nodes/").json()["results"][0]["latest"]
    assert "junk" not in stored and "extra" not in stored["tables"]["user"]
    assert telemetry_event("n", protocol_telemetry.clean_sample(junky), 1).sample == event["sample"]


def test_4_one_nodes_overflowing_rows_stop_neither_the_watchdog_nor_retention(clients):
    """Rows from before the bounds (the migration clamps them; inserted here as they were)."""
    bad, _ = make_node("overflowing")
    good, _ = make_node("breaching")
    now = timezone.now()
    for i in range(3):  # both nodes over the SLA in each of the last 3 intervals
        end = now - timedelta(seconds=10 * (3 - i))
        feed(bad, [1e308] * 2, end)
        feed(good, [500.0] * 2, end)
    report = watchdog.run(now)
    assert "breaching:sla_violation" in report.raised
    assert Alert.objects.filter(node=good, kind="sla_violation").exists()

    old = now - timedelta(days=3)
    feed(bad, [1e308] * 2, old)
    feed(good, [5.0] * 2, old)
    result = telemetry_service.downsample(now)
    assert result["folded"] >= 2  # the good node's old rows, whatever the other's did
    assert not TelemetrySample.objects.filter(
        node=good, resolution_s=0, ts__lt=now - timedelta(days=2)
    )
    expired = telemetry_service.expire(now + timedelta(days=60))
    assert expired["failed"] == 0 and not TelemetrySample.objects.exists()


def test_4_a_failing_check_of_one_node_is_reported_and_the_others_run(clients, monkeypatch):
    first, _ = make_node("first")
    second, _ = make_node("second")
    now = timezone.now()
    for node in (first, second):
        for i in range(3):
            feed(node, [500.0] * 2, now - timedelta(seconds=10 * (3 - i)))
    real = watchdog._check_sla

    def check(verdicts, *args):
        if verdicts.node.name == "first":
            raise RuntimeError("bad data")
        return real(verdicts, *args)

    monkeypatch.setattr(watchdog, "_check_sla", check)
    report = watchdog.run(now)
    assert report.failed == ["first"] and report.raised == ["second:sla_violation"]


def test_4_non_finite_aggregates_are_null_in_range_queries(clients):
    node = clients.node
    feed(node, [float("inf")] * 2, timezone.now() - timedelta(seconds=29))
    start, end = timezone.now() - timedelta(minutes=5), timezone.now()
    series = telemetry_service.series(node, start, end, ["p99_ms"], 60)
    assert None in series["avg"]["p99_ms"] and all(
        v is None or v < 1e300 for v in series["avg"]["p99_ms"]
    )


@pytest.mark.parametrize("url", ["/api/nodes/", "/api/experiments/"])
def test_16_deep_json_to_api_writes_is_a_400(clients, url):
    deep = '{"name": "n", "topology": ' + "[" * 5000 + "]" * 5000 + "}"
    response = clients("admin").post(url, deep, content_type="application/json")
    assert response.status_code == 400 and "nested" in response.json()["detail"]


def test_16_nul_and_huge_numbers_in_topology_are_field_errors(clients):
    admin = clients("admin")
    for topology in ({"cpus": "0\u00001"}, {"cpus": 2**70}):
        response = admin.post("/api/nodes/", {"name": "t1", "topology": topology}, format="json")
        assert response.status_code == 400, response.content
    assert not Node.objects.filter(name="t1").exists()


def test_19_api_errors_are_json_even_with_debug_on(clients, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingest, "ingest_batch", broken)
    with override_settings(DEBUG=True):
        client = clients("node")
        client.raise_request_exception = False
        response = client.post(
            INGEST,
            json.dumps({"node": "matrix-node", "samples": []}),
            content_type="application/json",
        )
    assert response.status_code == 500 and response["Content-Type"] == "application/json"
    assert "Traceback" not in response.content.decode() and "a bug" not in response.content.decode()


def test_20_generated_tokens_never_start_with_a_dash(monkeypatch):
    drawn = iter(["-starts-with-a-dash", "fine-token"])
    monkeypatch.setattr(tokens.secrets, "token_urlsafe", lambda n: next(drawn))
    assert tokens.new_token() == "fine-token"


def test_a_sample_at_every_bound_is_stored(clients):
    """The edges of the table are inside: never a lost valid sample."""
    now = time.time()
    low = {name: bound.low for name, (_, bound) in protocol_telemetry.SAMPLE_METRICS.items()}
    high = {name: bound.high for name, (_, bound) in protocol_telemetry.SAMPLE_METRICS.items()}
    table = {
        "rank": 4096,
        "memory_bytes": protocol_telemetry.BYTES_HIGH,
        "memory_pct": protocol_telemetry.PCT_HIGH,
    }
    edges = [
        sample(
            protocol_telemetry.MAX_WIRE_INT,
            now + 299,
            **high,
            tables={"t": table},
            cpu_per_core=[100.0],
        ),
        sample(0, now - 30 * 86400 + 60, **low, cpu_per_core=[0.0] * protocol_telemetry.MAX_CPUS),
    ]
    response = post(clients, edges, epoch=protocol_telemetry.MAX_WIRE_INT)
    assert response.status_code == 200, response.content[:500]
    assert response.json()["accepted"] == 2
    assert clients("viewer").get("/api/nodes/").status_code == 200
    assert datetime.fromtimestamp(0, UTC) < TelemetrySample.objects.earliest("ts").ts
