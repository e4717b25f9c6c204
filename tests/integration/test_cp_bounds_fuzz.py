"""Property-based fuzzing (hypothesis) at and beyond every bound of nodeworker.protocol's tables
(issue 17): ingest, the API writes and the node endpoint never answer 5xx, a sample whose every
field is inside its bounds is always stored (no valid sample lost), and what is broadcast is
exactly what was stored. Which values are inside is decided here, from how each was drawn, not
by asking the validator."""

from __future__ import annotations

import json
import math
import time

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.models import Node, Policy, TelemetrySample
from controlplane.services import ingest
from nodeworker import protocol
from nodeworker.http import NodeHTTPServer
from nodeworker.protocol import telemetry as protocol_telemetry
from tests.integration.cp_support import INGEST, sample
from tests.unit.test_node_http_limits import RawScores

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
BEYOND = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, 2**63, -(2**63)]),
    st.text(max_size=3),
    st.booleans(),
)


def drawn(bound: protocol.Bound) -> st.SearchStrategy[tuple[object, bool]]:
    """(value, inside) at and around a bound: its edges, values between, and beyond."""
    low, high = bound.low, bound.high
    inside = [st.sampled_from([high] if bound.low_open else [low, high])]
    inside.append(st.floats(low, high, exclude_min=bound.low_open))
    outside = [
        st.floats(max_value=low, exclude_max=not bound.low_open, allow_nan=False),
        st.floats(min_value=high, exclude_min=True, allow_nan=False),
        st.integers(min_value=int(high) + 1, max_value=2**80),
        BEYOND,
    ]
    if bound.kind is int:
        inside = [st.sampled_from([int(low), int(high)]), st.integers(int(low), int(high))]
        outside.append(st.just(float(low) + 0.5))
    if bound.nullable:
        inside.append(st.none())
    return st.one_of(
        st.one_of(inside).map(lambda v: (v, True)), st.one_of(outside).map(lambda v: (v, False))
    )


@st.composite
def fuzzed_samples(draw, seq: int) -> tuple[dict, bool]:
    """A sample with every metric, one table and the CPUs drawn (inside: all inside)."""
    now = time.time()
    values = {
        name: draw(drawn(bound)) for name, (_, bound) in protocol_telemetry.SAMPLE_METRICS.items()
    }
    table = {name: draw(drawn(bound)) for name, bound in protocol_telemetry.TABLE_BOUNDS.items()}
    cpu = draw(drawn(protocol_telemetry.CPU_BOUND))
    ts = draw(
        st.sampled_from(
            [(now, True), (now + 290, True), (now - 86400 * 29, True), (now + 3600, False)]
            + [(253402300800.0, False), (-1.0, False)]
        )
    )
    junk = draw(st.sampled_from([{}, {"junk": "x" * 1000}, {"tables_extra": [1, 2]}]))
    body = {
        **sample(seq, ts[0]),
        **{name: v for name, (v, _) in values.items()},
        "tables": {"t": {name: v for name, (v, _) in table.items()}},
        "cpu_per_core": [cpu[0]],
        **junk,
    }
    inside = ts[1] and cpu[1] and all(ok for _, ok in [*values.values(), *table.values()])
    return body, inside


@pytest.mark.django_db
@FUZZ
@given(data=st.data())
def test_ingest_at_and_beyond_every_bound(clients, monkeypatch, data):
    sent: list = []
    monkeypatch.setattr(ingest.status, "broadcast_many", sent.extend)
    monkeypatch.setattr(ingest.transaction, "on_commit", lambda fn, *a, **k: fn())
    start = TelemetrySample.objects.filter(node=clients.node).count()
    batch = [data.draw(fuzzed_samples(start + i)) for i in range(data.draw(st.integers(1, 3)))]
    text = json.dumps({"node": clients.node.name, "samples": [s for s, _ in batch]})
    response = clients("node").post(INGEST, text, content_type="application/json")
    assert response.status_code < 500, response.content[:300]
    stored = list(TelemetrySample.objects.filter(node=clients.node).order_by("id")[start:])
    if all(inside for _, inside in batch):
        assert response.status_code == 200, response.content[:500]
        assert [row.seq for row in stored] == [s["seq"] for s, _ in batch]  # none lost
        (event,) = [e.to_json() for e, _ in sent if e.KIND == "telemetry"]
        row = stored[-1]
        for field, value in event["sample"].items():  # every broadcast field was stored
            assert field in protocol_telemetry.SAMPLE_FIELDS
            assert getattr(row, field) == value or field == "ts", field
    else:
        assert response.status_code == 400 and stored == [] and sent == []


@pytest.mark.django_db
@FUZZ
@given(field=st.sampled_from(sorted(protocol.POLICY_BOUNDS)), data=st.data())
def test_policy_writes_at_and_beyond_every_bound(clients, field, data):
    value, inside = data.draw(drawn(protocol.POLICY_BOUNDS[field]))
    text = json.dumps({"name": "fuzzed-policy", field: value})
    response = clients("admin").post("/api/policies/", text, content_type="application/json")
    assert response.status_code < 500, response.content[:300]
    if response.status_code == 201:
        Policy.objects.filter(name="fuzzed-policy").delete()
    elif inside and not (  # r_min <= r_max, with the other at its default
        (field == "r_min" and value > protocol.POLICY_DEFAULTS["r_max"])
        or (field == "r_max" and value < protocol.POLICY_DEFAULTS["r_min"])
    ):
        pytest.fail(f"{field}={value!r} is inside its bounds: {response.content[:300]}")


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=20,
)


@pytest.mark.django_db
@FUZZ
@given(topology=st.dictionaries(st.text(max_size=4), JSON, max_size=4))
def test_node_writes_with_any_json_topology(clients, topology):
    text = json.dumps({"name": "fuzzed-node", "topology": topology})
    response = clients("admin").post("/api/nodes/", text, content_type="application/json")
    assert response.status_code < 500, response.content[:300]
    assert clients("viewer").get("/api/nodes/").status_code == 200  # the list stays readable
    Node.objects.filter(name="fuzzed-node").delete()


@pytest.fixture(scope="module")
def node_endpoint():
    server = NodeHTTPServer(RawScores()).start()
    yield server.url
    server.stop()


@FUZZ
@given(dense=st.lists(st.one_of(st.floats(), st.integers(), st.text(max_size=2)), max_size=3))
def test_the_node_endpoint_answers_json_and_never_5xx(node_endpoint, dense):
    body = json.dumps({"requests": [{"sparse": {"user": "u", "tags": []}, "dense": dense}]})
    response = requests.post(node_endpoint + "/v1/predict", data=body, timeout=10)
    assert response.status_code < 500, response.text[:300]
    answer = json.loads(response.text, parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    if response.status_code == 200:
        assert all(math.isfinite(s) for s in answer["scores"])
