"""Control tasks reach the running node runtime: a real Celery worker of the node app consumes
``node.<name>`` over Redis and forwards each task over the control channel."""

from __future__ import annotations

import os
import threading
import uuid

import pytest

from nodeworker import protocol
from nodeworker.control_socket import ControlClient, ControlError, ControlServer, InvalidRequest
from nodeworker.protocol.operations import task_name
from tests import services


class Recorder:
    """Stands in for NodeRuntime: the control ops, recorded."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []
        self.event = threading.Event()

    def _record(self, op, **kwargs):
        self.calls.append((op, kwargs))
        self.event.set()
        return {"op": op, "done": True}

    def apply_policy(self, policy, policy_name=None, version=None, overrides=None):
        return self._record(
            "apply_policy",
            policy=policy,
            policy_name=policy_name,
            version=version,
            overrides=overrides,
        )

    def pause(self):
        return self._record("pause")

    def resume(self):
        return self._record("resume")

    def snapshot(self):
        return self._record("snapshot")

    def rebase(self, checkpoint, keep_factors=False):
        if not os.path.exists(checkpoint["location"]):
            raise InvalidRequest({"checkpoint.location": "No such file."})
        return self._record("rebase", checkpoint=checkpoint, keep_factors=keep_factors)

    def apply_delta(self, deltas, created_at=None, trained_until=None):
        return self._record(
            "apply_delta", deltas=deltas, created_at=created_at, trained_until=trained_until
        )

    def status(self):
        return {"calls": len(self.calls)}


def test_control_channel_dispatch_and_errors(tmp_path):
    target = Recorder()
    server = ControlServer(tmp_path / "c.sock", target).start()
    try:
        client = ControlClient(tmp_path / "c.sock", timeout_s=5)
        assert client.call("pause") == {"op": "pause", "done": True}
        with pytest.raises(ControlError, match="unknown op 'shutdown'"):
            client.call("shutdown")
        with pytest.raises(ControlError, match="bad arguments for pause"):
            client.call("pause", force=True)
        with pytest.raises(ControlError) as info:
            client.call("rebase", checkpoint={"location": str(tmp_path / "missing.pt")})
        assert info.value.fields == {"checkpoint.location": "No such file."}
        assert oct(os.stat(tmp_path / "c.sock").st_mode & 0o777) == "0o600"
    finally:
        server.stop()
    with pytest.raises(OSError):
        ControlClient(tmp_path / "c.sock").call("pause")


def test_control_task_delivered_to_the_node_queue_by_a_real_worker(redis_url, tmp_path):
    import redis
    from celery import Celery

    name = f"edge-{uuid.uuid4().hex[:6]}"
    sock = f"/tmp/lu-{uuid.uuid4().hex[:8]}.sock"  # short: AF_UNIX paths max out at 107 bytes
    target = Recorder()
    server = ControlServer(sock, target).start()
    env = services.node_env(redis_url, NODE_NAME=name, NODE_CONTROL_SOCKET=sock)
    client = Celery("test-plane", broker=redis_url, backend=redis_url)
    other = protocol.node_queue(f"other-{uuid.uuid4().hex[:6]}")
    try:
        with services.celery_worker(
            env, "nodeworker.celery_app", protocol.node_queue(name), tmp_path / "worker.log"
        ):
            # Sent exactly as the control plane sends it (controlplane/services/actions.py).
            policy, _ = protocol.validate_policy({"r_max": 8, "sla_p99_ms": 20.0})
            assert policy is not None
            result = client.send_task(
                task_name("apply_policy"),
                kwargs={
                    "policy": policy.wire(),
                    "policy_name": "tight",
                    "version": 3,
                    "overrides": {"max_trainer_duty": 0.25},
                },
                queue=protocol.node_queue(name),
            )
            assert result.get(timeout=60) == {"op": "apply_policy", "done": True}
            op, kwargs = target.calls[-1]
            assert op == "apply_policy" and kwargs["version"] == 3
            assert kwargs["policy"]["r_max"] == 8 and kwargs["policy"]["sla_p99_ms"] == 20.0
            assert kwargs["overrides"] == {"max_trainer_duty": 0.25}

            bad = client.send_task(
                task_name("apply_policy"),
                kwargs={"policy": {"r_min": 9, "r_max": 4, "bogus": 1}},
                queue=protocol.node_queue(name),
            )
            with pytest.raises(Exception, match="r_max: Must be >= r_min") as info:
                bad.get(timeout=30)
            assert "bogus: Unknown policy field" in str(info.value)
            assert len(target.calls) == 1  # refused before it reached the runtime

            stray = client.send_task(task_name("pause"), queue=other)
            for task in (task_name("pause"), task_name("snapshot"), task_name("resume")):
                client.send_task(task, queue=protocol.node_queue(name)).get(timeout=30)
            assert [c[0] for c in target.calls] == ["apply_policy", "pause", "snapshot", "resume"]
            assert redis.Redis.from_url(redis_url).llen(other) == 1  # not this node's queue
            stray.forget()
    finally:
        redis.Redis.from_url(redis_url).delete(other)
        server.stop()
