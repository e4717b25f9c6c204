"""The production plumbing for real: PostgreSQL through psycopg 3, a Celery worker over Redis,
websockets through `liveupdate serve` on the Redis layer and on the embedded in-memory layer."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest
import requests
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests import services


def test_migrations_apply_on_postgresql(fresh_postgres_db, tmp_path):
    env = services.appliance_env(tmp_path, fresh_postgres_db, None)
    services.manage(env, "migrate", "--noinput")
    plan = services.manage(env, "showmigrations", "--plan")
    assert "[ ]" not in plan and "[X]  auth.0001_initial" in plan
    with psycopg.connect(fresh_postgres_db) as conn:
        applied = conn.execute("SELECT count(*) FROM django_migrations").fetchone()[0]
        assert psycopg.__version__.startswith("3.")
    assert applied == plan.count("[X]")


def test_celery_task_runs_on_a_real_worker_over_redis(redis_url, tmp_path):
    from celery import Celery

    env = services.appliance_env(tmp_path, None, redis_url)
    queue = f"controlplane-{uuid.uuid4().hex[:6]}"
    client = Celery("test-client", broker=redis_url, backend=redis_url)
    with services.celery_worker(env, "controlplane", queue, tmp_path / "worker.log"):
        token = uuid.uuid4().hex
        result = client.send_task("controlplane.ping", args=[token], queue=queue)
        assert result.get(timeout=60) == f"pong:{token}"


def _ws_url(app: services.Appliance) -> str:
    return app.url.replace("http://", "ws://") + "/ws/fleet/"


def _open_socket(app: services.Appliance, session: requests.Session):
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    return connect(
        _ws_url(app), additional_headers={"Cookie": cookie, "Origin": app.url}, open_timeout=10
    )


def _ping_round_trip(ws) -> None:
    token = uuid.uuid4().hex
    ws.send(json.dumps({"action": "ping", "id": token}))
    assert json.loads(ws.recv(timeout=10)) == {"kind": "pong", "id": token}


@pytest.fixture
def redis_appliance(fresh_postgres_db, redis_url, tmp_path):
    env = services.appliance_env(tmp_path, fresh_postgres_db, redis_url)
    with services.Appliance(env, tmp_path / "server.log") as app:
        yield app


@pytest.fixture
def embedded_appliance(tmp_path):
    env = services.appliance_env(tmp_path, None, None)
    with services.Appliance(env, tmp_path / "server.log") as app:
        yield app


def test_websocket_round_trip_on_redis_layer(redis_appliance, redis_url):
    from asgiref.sync import async_to_sync
    from channels_redis.core import RedisChannelLayer
    from django.conf import settings

    health = requests.get(f"{redis_appliance.url}/api/health/", timeout=5).json()
    assert health["channel_layer_backend"] == "RedisChannelLayer"
    assert health["ok"] and health["channel_layer"] == health["broker"] == "ok"
    assert health["database_engine"] == "postgresql"
    with _open_socket(redis_appliance, redis_appliance.login()) as ws:
        _ping_round_trip(ws)
        # A message published by another process through Redis reaches the browser's socket.
        prefix = settings.CHANNEL_LAYERS["default"]["CONFIG"]["prefix"]  # the server's, too
        layer = RedisChannelLayer(hosts=[redis_url], prefix=prefix)
        event = {"kind": "telemetry", "node": "n1", "p99_ms": 12.5}
        async_to_sync(layer.group_send)(
            "fleet", {"type": "fleet.event", "texts": [json.dumps(event)]}
        )
        assert json.loads(ws.recv(timeout=10)) == event


def test_websocket_round_trip_embedded(embedded_appliance):
    health = requests.get(f"{embedded_appliance.url}/api/health/", timeout=5).json()
    assert health == {
        "ok": True,
        "database": "ok",
        "database_engine": "sqlite",
        "channel_layer": "ok",
        "channel_layer_backend": "InMemoryChannelLayer",
        "broker": "ok",
        "broker_transport": "filesystem",
    }
    with _open_socket(embedded_appliance, embedded_appliance.login()) as ws:
        _ping_round_trip(ws)


def test_websocket_refuses_anonymous_clients(embedded_appliance):
    with pytest.raises((InvalidStatus, Exception)) as excinfo:
        with connect(
            _ws_url(embedded_appliance),
            additional_headers={"Origin": embedded_appliance.url},
            open_timeout=10,
        ) as ws:
            ws.recv(timeout=5)
    assert "4401" in str(excinfo.value) or "403" in str(excinfo.value)
