"""Bad input against the API, generated: every malformed telemetry sample and policy is a 400
with an error on its field and stores nothing; the role matrix holds on every operation the
OpenAPI schema lists (so a new endpoint is checked the day it appears)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controlplane.api import router
from controlplane.models import Policy, TelemetrySample
from nodeworker import protocol
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.protocol.operations import PLANE_ACTIONS
from tests.integration.cp_support import INGEST, ROLES, expected_status, sample

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# Values no numeric field may take (JSON has no NaN/Infinity, but Python's json writes them).
# NUL and lone surrogates refuse the whole request before any field is read (the JSON parser;
# test_cp_reliability covers them): here, text that a field validator sees.
FIELD_CHARS = st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")
NOT_A_NUMBER = st.one_of(
    st.text(FIELD_CHARS, max_size=5),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(FIELD_CHARS, max_size=3), st.integers(), max_size=2),
    st.sampled_from([math.nan, math.inf, -math.inf]),
)


@st.composite
def bad_samples(draw) -> tuple[dict, str]:
    """(a sample with one malformed field, that field)."""
    field = draw(
        st.sampled_from(
            ["seq", "ts", "throttle", "tables", "events", *protocol_telemetry.SAMPLE_METRICS]
        )
    )
    if field == "seq":
        value = draw(st.one_of(NOT_A_NUMBER, st.integers(max_value=-1), st.floats(0.5, 9.5)))
    elif field == "ts":
        value = draw(st.one_of(NOT_A_NUMBER, st.floats(max_value=0.0), st.floats(min_value=4e9)))
    elif field == "throttle":
        states = protocol_telemetry.THROTTLE_STATES
        value = draw(st.text(FIELD_CHARS, max_size=8).filter(lambda t: t not in states))
    elif field == "tables":
        value = draw(
            st.one_of(st.text(FIELD_CHARS, max_size=3), st.lists(st.integers(), min_size=1))
        )
    elif field == "events":
        value = draw(
            st.one_of(
                st.text(FIELD_CHARS, max_size=3),
                st.just([{"kind": "not-a-kind", "ts": 1.0, "detail": {}}]),
                st.just([{"kind": "qos", "ts": "then", "detail": {}}]),
            )
        )
    else:
        bound = protocol_telemetry.SAMPLE_METRICS[field][1]
        value = draw(
            st.one_of(
                NOT_A_NUMBER,
                st.floats(max_value=bound.low, exclude_max=True),
                st.floats(min_value=bound.high, exclude_min=True),
                st.integers(min_value=int(bound.high) + 1),
            )
        )
    return {**sample(1), field: value}, field


@pytest.mark.django_db
@FUZZ
@given(case=bad_samples())
def test_fuzzed_telemetry_is_a_field_error_and_stores_nothing(clients, case):
    bad, field = case
    before = TelemetrySample.objects.count()
    response = clients("node").post(
        INGEST,
        json.dumps({"node": clients.node.name, "samples": [sample(0), bad]}),
        content_type="application/json",
    )
    assert response.status_code == 400, (field, bad[field], response.content[:300])
    errors = response.json()
    assert any(key.startswith(f"samples[1].{field}") for key in errors), errors
    assert TelemetrySample.objects.count() == before  # the batch is refused whole


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


@st.composite
def bad_policies(draw) -> tuple[dict, str]:
    field = draw(st.sampled_from(["mode", "prune_action", *protocol.POLICY_BOUNDS]))
    if field in ("mode", "prune_action"):
        allowed = protocol.MODES if field == "mode" else protocol.PRUNE_ACTIONS
        value = draw(
            st.one_of(
                st.integers(), st.text(FIELD_CHARS, max_size=8).filter(lambda t: t not in allowed)
            )
        )
    else:
        bound = protocol.POLICY_BOUNDS[field]
        outside = []
        if bound.high is not None:
            outside.append(st.floats(bound.high, 1e12, exclude_min=True))
        if bound.low is not None:
            outside.append(st.floats(-1e12, bound.low, exclude_max=not bound.low_open))
        # Policies come from forms too (the admin, the browsable API), so a number in a string
        # ("5") is a number there, as DRF parses it; only text that is no number is bad.
        bad_number = st.one_of(
            st.text(FIELD_CHARS, max_size=5).filter(lambda t: not is_number(t)),
            st.booleans(),
            st.lists(st.integers(), max_size=2),
        )
        value = draw(st.one_of(bad_number, *outside))
    return {"name": "fuzzed", field: value}, field


@pytest.mark.django_db
@FUZZ
@given(case=bad_policies())
def test_fuzzed_policies_are_field_errors_and_create_nothing(clients, case):
    body, field = case
    response = clients("admin").post("/api/policies/", body, format="json")
    assert response.status_code == 400, (body, response.content[:300])
    assert field in response.json(), response.json()
    assert not Policy.objects.filter(name="fuzzed").exists()


@pytest.mark.django_db
@pytest.mark.parametrize("field", sorted(protocol.POLICY_BOUNDS))
def test_policy_numbers_in_strings_parse_and_non_finite_strings_are_field_errors(clients, field):
    admin = clients("admin")
    for text in ("nan", "inf", "-inf", "1e999"):
        response = admin.post("/api/policies/", {"name": "strings", field: text}, format="json")
        assert response.status_code == 400 and field in response.json(), (text, response.json())
    inside = protocol.POLICY_DEFAULTS.get(field)
    if inside is None:  # optional (auc_floor): its lowest allowed value
        inside = protocol.POLICY_BOUNDS[field].low
    response = admin.post("/api/policies/", {"name": "strings", field: str(inside)}, format="json")
    assert response.status_code == 201, response.json()
    assert Policy.objects.get(name="strings").__dict__[field] == inside


# --- the role matrix on every operation of the schema ------------------------------------------

PUBLIC = {("/api/health/", "get")}
NODE_ONLY = {(INGEST, "post")}
ANY_AUTHENTICATED = {("/api/me/", "get")}
# Node actions need the role their declaration gives (nodeworker.protocol.operations).
ACTION_ROLES = {
    (f"/api/nodes/{{name}}/{name}/", "post"): spec.role for name, spec in PLANE_ACTIONS.items()
}
OPERATOR = {("/api/alerts/{id}/acknowledge/", "post")}


def operations(client) -> list[tuple[str, str]]:
    paths = client.get("/api/schema/", {"format": "json"}).json()["paths"]
    return sorted((path, method) for path, item in paths.items() for method in item)


def concrete(path: str) -> str:
    """Path parameters that name nothing: an allowed role gets a 404, never a 401/403."""
    return path.replace("{name}", "no-such-node").replace("{id}", "987654")


def expected(path: str, method: str, role: str) -> int | None:
    """The status a role must get, or None for 'allowed' (any 2xx/4xx but 401/403)."""
    op = (path, method)
    if op in PUBLIC:
        return None
    if op in NODE_ONLY:
        return None if role == "node" else 401  # user credentials are not even read there
    if op in ANY_AUTHENTICATED:
        return 401 if role == "anonymous" else None
    needed = ACTION_ROLES.get(op) or (
        "operator" if op in OPERATOR else ("viewer" if method == "get" else "admin")
    )
    status = expected_status(role, needed, 0)
    return None if status == 0 else status


@pytest.mark.django_db
def test_every_schema_operation_holds_the_role_matrix(clients, sent_tasks):
    ops = operations(clients("anonymous"))
    prefixes = {f"/api/{prefix}/" for prefix, _, _ in router.registry}
    assert prefixes <= {p for p, _ in ops if p.count("/") == 3}, (
        "an endpoint missing from the schema"
    )
    assert set(ACTION_ROLES) | OPERATOR | NODE_ONLY | PUBLIC | ANY_AUTHENTICATED <= set(ops)
    failures = []
    for path, method in ops:
        url = concrete(path)
        for role in ROLES:
            call = getattr(clients(role), method)
            response = call(url, {}, format="json") if method != "get" else call(url)
            want = expected(path, method, role)
            got = response.status_code
            ok = got == want if want is not None else got not in (401, 403) and got < 500
            if not ok:
                failures.append(
                    f"{method.upper()} {path} as {role}: {got}, want {want or 'allowed'}"
                )
    assert not failures, "\n".join(failures)
    assert sent_tasks == []  # nothing named an existing node


@pytest.mark.django_db
@pytest.mark.parametrize("seq", [[1], {"a": 1}])
def test_an_unhashable_seq_is_a_field_error_not_a_500(clients, seq):
    body = {"node": clients.node.name, "samples": [{**sample(0), "seq": seq}]}
    response = clients("node").post(INGEST, body, format="json")
    assert response.status_code == 400 and "samples[0].seq" in response.json()


@pytest.mark.django_db
def test_a_boolean_policy_number_is_a_field_error(clients):
    response = clients("admin").post("/api/policies/", {"name": "b", "r_max": True}, format="json")
    assert response.status_code == 400 and response.json() == {"r_max": ["Must be a number."]}


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["/api/alerts/?raised_after=", "/api/events/?since=", "/api/experiments/?created_after="]
)
def test_any_iso_offset_is_queried_in_utc_not_a_500(clients, url):
    """PostgreSQL refuses offsets beyond +-15:59; ISO 8601 allows up to 23:59 (found by
    schemathesis)."""
    assert clients("viewer").get(url + "2000-01-01T00:00:00%2B16:00").status_code == 200
    assert clients("viewer").get(url + "0001-01-01T00:00:00%2B01:00").status_code == 400


@pytest.mark.django_db
def test_a_nul_byte_in_the_telemetry_node_is_a_field_error(clients):
    """Found by schemathesis: it was a database error (500)."""
    url = "/api/telemetry/?node=%00x&start=2026-01-01T00:00:00Z&end=2026-01-02T00:00:00Z"
    response = clients("viewer").get(url)
    assert response.status_code == 400 and "node" in response.json()
