"""Redis (broker, result backend and channel layer) restarted under load: telemetry ingest goes
on, an action requested during the outage is retried and reaches the node once Redis is back,
the node's Celery worker reconnects, and dashboards get the live stream again. A private
redis-server: the shared one on 6379 is never touched."""

from __future__ import annotations

import json
import threading
import time

from celery import Celery
from websockets.sync.client import connect

from tests.fault.support import Plane, PrivateRedis, assert_exactly_once, plane_and_node, wait_for


def telemetry_event_of(plane: Plane, cookie: str, name: str, timeout: float) -> dict:
    """A telemetry event of ``name`` on a fresh dashboard socket (as the page reconnects)."""
    ws_url = plane.url.replace("http://", "ws://") + "/ws/fleet/"
    headers = {"Cookie": cookie, "Origin": plane.url}
    deadline = time.monotonic() + timeout
    with connect(ws_url, additional_headers=headers, open_timeout=10) as ws:
        while time.monotonic() < deadline:
            event = json.loads(ws.recv(timeout=max(0.1, deadline - time.monotonic())))
            if event.get("kind") == "telemetry" and name in json.dumps(event):
                return event
    raise TimeoutError(f"no telemetry event of {name} within {timeout} s")


def test_redis_restart_under_load(fresh_postgres_db, tmp_path):
    redis = PrivateRedis(tmp_path).start()
    try:
        with plane_and_node(fresh_postgres_db, redis.url, tmp_path, "redis") as (plane, node):
            name = node.name
            node.start(qps=20)
            wait_for(lambda: len(plane.seqs(name)) >= 3, 120, "first telemetry", node)
            session = plane.appliance.login()
            cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
            assert telemetry_event_of(plane, cookie, name, 30)

            redis.stop()
            before = len(plane.seqs(name))
            sent: dict = {}
            request = threading.Thread(
                target=lambda: sent.update(r=plane.api("post", f"nodes/{name}/pause/"))
            )
            request.start()  # the broker is down: the publish is retried ...
            time.sleep(4)
            assert len(plane.seqs(name)) > before  # ... while ingest goes on without Redis
            redis.start()  # ... and succeeds once it is back
            request.join(timeout=60)
            assert sent["r"].status_code == 202, sent["r"].text
            client = Celery("fault-test", broker=redis.url, backend=redis.url)
            result = client.AsyncResult(sent["r"].json()["task_id"]).get(timeout=90)
            assert result == {"throttle": "paused"}  # the node's worker reconnected and ran it
            paused = (
                "SELECT count(*) FROM controlplane_telemetrysample t JOIN controlplane_node n "
                "ON n.id = t.node_id WHERE n.name = %s AND t.throttle = 'paused'"
            )
            wait_for(lambda: plane.query(paused, name)[0][0] > 0, 30, "a paused sample", node)
            assert telemetry_event_of(plane, cookie, name, 30)  # Channels works again
            assert_exactly_once(plane.seqs(name))
    finally:
        redis.stop()
