"""The control plane with real processes: node actions reaching a Celery worker on the node's
queue over Redis, and a dashboard websocket receiving what a node ingests through the API
(`liveupdate serve` + PostgreSQL + the Redis channel layer, and the embedded in-memory layer)."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis
import requests
from django.conf import settings
from websockets.sync.client import connect

from controlplane.models import NodeAction, Policy
from controlplane.services import actions
from controlplane.services.policies import save_policy
from tests import services
from tests.integration.cp_support import make_node, sample


@pytest.mark.django_db
def test_node_actions_reach_a_real_worker_on_the_node_queue(redis_url, tmp_path, clients):
    if not settings.REDIS_URL:
        pytest.skip("the control plane under test is not configured with REDIS_URL")
    name = f"w-{uuid.uuid4().hex[:8]}"
    node, _ = make_node(name)
    policy = Policy(name=f"p-{name}", tau=0.93)
    save_policy(policy, actor="test")
    store = redis.Redis.from_url(redis_url)
    key = f"cp-test:calls:{name}"
    env = services.appliance_env(tmp_path, None, redis_url)
    env["NODE_NAME"] = name
    queue = f"node.{name}"
    with services.celery_worker(env, "tests.integration.cp_node_app", queue, tmp_path / "w.log"):
        operator = clients("operator")
        paused = operator.post(f"/api/nodes/{name}/pause/")
        applied = operator.post(
            f"/api/nodes/{name}/apply_policy/", {"policy": policy.pk}, format="json"
        )
        assert paused.status_code == applied.status_code == 202
        records = [NodeAction.objects.get(pk=r.data["id"]) for r in (paused, applied)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            records = [actions.refresh_action(r) for r in records]
            if all(r.state != "sent" for r in records):
                break
            time.sleep(0.2)
        log = (tmp_path / "w.log").read_text()
        assert [r.state for r in records] == ["succeeded", "succeeded"], log
    calls = [json.loads(c) for c in store.lrange(key, 0, -1)]
    store.delete(key)
    assert [c["task"] for c in calls] == ["nodeworker.pause", "nodeworker.apply_policy"]
    assert calls[1]["kwargs"]["policy"]["tau"] == 0.93
    assert calls[1]["kwargs"]["policy_name"] == policy.name
    assert records[0].result == {"ok": True, "node": name, "task": "nodeworker.pause"}
    # The outcome is what the API shows too.
    shown = clients("viewer").get(f"/api/actions/{records[1].pk}/").data
    assert shown["state"] == "succeeded" and shown["result"]["task"] == "nodeworker.apply_policy"


def _socket(app: services.Appliance):
    session = app.login()
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    url = app.url.replace("http://", "ws://") + "/ws/fleet/"
    return connect(url, additional_headers={"Cookie": cookie, "Origin": app.url}, open_timeout=10)


def _ingest(app: services.Appliance, token: str, body: dict) -> dict:
    response = requests.post(
        f"{app.url}/api/telemetry/ingest/",
        json=body,
        headers={"Authorization": f"Node {token}"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _next_of(ws, kind: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
        if message.get("kind") == kind:
            return message


def _stream_round_trip(app: services.Appliance) -> None:
    token = services.manage(app.env, "create_node", "edge-ws").strip().splitlines()[-1]
    other = services.manage(app.env, "create_node", "edge-other").strip().splitlines()[-1]
    with _socket(app) as ws:
        ws.send(json.dumps({"action": "watch_node", "node": "edge-ws"}))
        assert json.loads(ws.recv(timeout=10)) == {
            "type": "watching",
            "nodes": ["edge-ws"],
            "fleet": False,
        }
        rank = {"kind": "rank_change", "ts": time.time(), "detail": {"table": "user", "to": 6}}
        body = {"node": "edge-ws", "samples": [sample(7, p99_ms=11.5, events=[rank])]}
        response = _ingest(app, token, body)
        assert response == {"accepted": 1, "duplicate": 0, "events": 1}
        status = _next_of(ws, "node_status")
        assert status["node"] == "edge-ws" and status["status"] == "online"
        event = _next_of(ws, "telemetry")
        assert event["node"] == "edge-ws" and event["accepted"] == 1
        assert event["sample"]["seq"] == 7 and event["sample"]["p99_ms"] == 11.5
        assert "events" not in event["sample"]
        ranked = _next_of(ws, "rank_event")
        assert ranked == {
            "kind": "rank_event",
            "node": "edge-ws",
            "event": "rank_change",
            "seq": 7,
            "ts": rank["ts"],
            "detail": {"table": "user", "to": 6},
        }
        # Watching edge-ws only: another node's telemetry does not reach this socket.
        _ingest(app, other, {"node": "edge-other", "samples": [sample(0)]})
        ws.send(json.dumps({"action": "ping", "id": "fence"}))
        seen = []
        while not seen or seen[-1].get("kind") != "pong":
            seen.append(json.loads(ws.recv(timeout=10)))
        assert seen[-1]["id"] == "fence"
        assert all(m.get("node") != "edge-other" for m in seen)


def test_websocket_receives_ingested_telemetry_on_redis_layer(
    fresh_postgres_db, redis_url, tmp_path
):
    env = services.appliance_env(tmp_path, fresh_postgres_db, redis_url)
    with services.Appliance(env, tmp_path / "server.log") as app:
        _stream_round_trip(app)
        # An alert raised by another process (the watchdog in a worker) reaches the socket too.
        with _socket(app) as ws:
            services.manage(
                env,
                "shell",
                "-c",
                "from datetime import timedelta; from django.utils import timezone; "
                "from controlplane.services import watchdog; "
                "print(watchdog.run(timezone.now() + timedelta(hours=1)))",
            )
            alerts = [_next_of(ws, "alert"), _next_of(ws, "alert")]
            assert {a["node"] for a in alerts} == {"edge-ws", "edge-other"}
            assert all(a["alert"]["kind"] == "node_down" and a["alert"]["open"] for a in alerts)


def test_websocket_receives_ingested_telemetry_embedded(tmp_path):
    env = services.appliance_env(tmp_path, None, None)
    with services.Appliance(env, tmp_path / "server.log") as app:
        _stream_round_trip(app)
