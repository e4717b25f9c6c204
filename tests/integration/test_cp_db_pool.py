"""controlplane.postgresql: the pool hands out a quiet connection without a query, and one the
server closed (pg_terminate_backend, as a restart does) is replaced before a request uses it."""

from __future__ import annotations

import time

import psycopg
import pytest
from django.db import connection
from psycopg_pool import ConnectionPool

from controlplane.postgresql.base import check_pooled_connection
from tests import services

pytestmark = pytest.mark.django_db(transaction=True)


def _backend_pid() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def _last_query(pid: int) -> str | None:
    with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as admin:
        row = admin.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", [pid]).fetchone()
    return None if row is None else row[0]


@pytest.fixture
def pooled():
    if connection.vendor != "postgresql" or connection.pool is None:
        pytest.skip("needs DATABASE_URL on PostgreSQL (the pool)")
    return connection.pool


def test_a_quiet_connection_is_handed_out_without_a_query(pooled):
    """One connection in the pool: every checkout hands out the same one, checked each time."""
    pool = ConnectionPool(
        kwargs=connection.get_connection_params() | {"autocommit": True},
        min_size=1,
        max_size=1,
        check=check_pooled_connection,
    )
    with pool:
        with pool.connection() as conn:
            pid = conn.info.backend_pid
            conn.execute("SELECT 'the last query'")
        with pool.connection() as conn:  # ConnectionPool.check_connection would send ""
            assert conn.info.backend_pid == pid
            assert _last_query(pid) == "SELECT 'the last query'"


def test_a_connection_the_server_closed_is_replaced_before_use(pooled):
    pid = _backend_pid()
    connection.close()
    with psycopg.connect(services.POSTGRES_ADMIN_URL, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [pid]).fetchone()[0]
    deadline = time.monotonic() + 10
    while _last_query(pid) is not None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _backend_pid() != pid  # a new connection, no OperationalError
    connection.close()
