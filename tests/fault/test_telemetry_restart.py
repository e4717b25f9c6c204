"""Issue 17, failure 1 and 13, against a real server on PostgreSQL and a private Redis:
- a node whose spool starts afresh (new volume, re-provisioned host) numbers from 0 again in a
  new epoch, and every one of its samples is stored (it used to be answered "duplicate" and
  lost until seq passed the old maximum); a sample resent under a stored key with other content
  is a 409 naming it, never a silent drop;
- Redis down is seen by /api/health/ (503, the channel layer and the broker in error) while
  ingest, which needs only the database, goes on."""

from __future__ import annotations

import time

import requests

from nodeworker import protocol
from nodeworker.telemetry import TelemetryReporter
from tests.fault.support import Plane, PrivateRedis
from tests.unit.test_telemetry import counter_snapshot


def reporter(plane: Plane, name: str, token: str, spool_dir) -> TelemetryReporter:
    return TelemetryReporter(name, plane.url, token, spool_dir, counter_snapshot(), timeout_s=30)


def drain(rep: TelemetryReporter) -> None:
    for _ in range(100):
        if rep.flush_once():
            return
    raise AssertionError(f"spool not drained: {rep.last_error}")


def stored(plane: Plane, name: str) -> list[tuple[int, int]]:
    return plane.query(
        "SELECT t.epoch, t.seq FROM controlplane_telemetrysample t "
        "JOIN controlplane_node n ON n.id = t.node_id WHERE n.name = %s ORDER BY t.id",
        name,
    )


def test_a_node_restarted_with_an_empty_spool_and_redis_down(fresh_postgres_db, tmp_path):
    redis = PrivateRedis(tmp_path).start()
    plane = Plane(fresh_postgres_db, redis.url, tmp_path).start()
    try:
        health = requests.get(f"{plane.url}/api/health/", timeout=10)
        assert health.status_code == 200 and health.json()["ok"]
        name = "respawned"
        token = plane.create_node(name)
        first = reporter(plane, name, token, tmp_path / "old-volume")
        for _ in range(300):
            first.record()
        drain(first)
        assert len(stored(plane, name)) == 300

        # The same node on a fresh volume: seq starts again at 0, in a new epoch.
        second = reporter(plane, name, token, tmp_path / "new-volume")
        assert second.spool.epoch != first.spool.epoch and second.spool.next_seq == 0
        for _ in range(48):
            second.record()
        drain(second)
        rows = stored(plane, name)
        assert len(rows) == 348 and rows[-48:] == [(second.spool.epoch, s) for s in range(48)]
        assert second.set_aside == 0 and second.sent == 48

        # A restored backup of the old volume that diverged: same key, other content.
        diverged = first.collect().to_sample(5, time.time())  # qps 300, not 5
        body = {"node": name, "epoch": first.spool.epoch, "samples": [diverged]}
        conflict = requests.post(
            plane.url + protocol.TELEMETRY_PATH,
            json=body,
            headers={"Authorization": f"Node {token}"},
            timeout=30,
        )
        assert conflict.status_code == 409, conflict.text
        assert conflict.json()["conflicts"] == [5]
        assert len(stored(plane, name)) == 348

        redis.stop()
        health = requests.get(f"{plane.url}/api/health/", timeout=10)
        assert health.status_code == 503, health.text
        report = health.json()
        assert not report["ok"] and report["database"] == "ok"
        assert report["channel_layer"].startswith("error") and report["broker"].startswith("error")
        for _ in range(3):
            second.record()
        drain(second)  # ingest needs the database only
        assert len(stored(plane, name)) == 351
        redis.start()
        assert requests.get(f"{plane.url}/api/health/", timeout=10).status_code == 200
    finally:
        plane.stop()
        redis.stop()
