"""Schemathesis against the control plane's own OpenAPI schema on a live server (uvicorn,
PostgreSQL, Redis), as an admin: whatever it generates for any operation, never a 5xx."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.fault.support import Plane


@pytest.fixture(scope="module")
def plane(postgres_url, redis_url, tmp_path_factory):
    from tests import services

    with services.temporary_postgres_database(postgres_url) as database_url:
        live = Plane(database_url, redis_url, tmp_path_factory.mktemp("schemathesis")).start()
        yield live
        live.stop()


@pytest.fixture(scope="module")
def api_schema(plane):
    return schemathesis.openapi.from_url(f"{plane.url}/api/schema/?format=json")


def test_no_operation_answers_5xx(api_schema, plane):
    """Every operation, up to 10 generated cases each (schemathesis' pytest plugin does not
    run under this pytest, so its Hypothesis strategies are driven here)."""
    headers = {"Authorization": f"Token {plane.token}"}
    operations, failures = 0, []
    for result in api_schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=10,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case):
            response = case.call(base_url=plane.url, headers=headers, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: "
                f"{response.text[:300]}"
            )

        try:
            run()
        except AssertionError as exc:
            failures.append(str(exc))
    assert operations >= 30  # the whole API was walked
    assert not failures, "\n".join(failures)
