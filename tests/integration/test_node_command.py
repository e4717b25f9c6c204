"""``liveupdate node run`` end to end: the node replays the synthetic stream, reports telemetry to
a control plane (a stdlib stand-in that validates and dedupes like the real ingest), and its
Celery worker takes a control task from ``node.<name>`` over Redis to the running runtime."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid

from nodeworker import protocol
from nodeworker.protocol.operations import task_name
from tests import services
from tests.fake_plane import TOKEN, FakePlane


def test_node_run_reports_telemetry_and_obeys_a_control_task(redis_url, tmp_path):
    from celery import Celery

    plane = FakePlane().up()
    name = f"cli-{uuid.uuid4().hex[:6]}"
    env = services.node_env(redis_url, LIVEUPDATE_DATA_DIR=str(tmp_path))
    log = (tmp_path / "node.log").open("w")
    node = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "controlplane.cli",
            "node",
            "run",
            "--name",
            name,
            "--replay",
            "synthetic",
            "--qps",
            "40",
            "--label-delay",
            "0.2",
            "--duration",
            "120",
            "--control-plane",
            plane.url,
            "--token",
            TOKEN,
            "--sla-ms",
            "5000",
        ],
        cwd=services.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:

        def trained():
            if node.poll() is not None:
                raise RuntimeError((tmp_path / "node.log").read_text()[-3000:])
            return any(s["trainer_samples_per_s"] > 0 for s in plane.samples.values())

        services.wait_until(trained, 120, "telemetry showing the trainer at work", 0.5)
        client = Celery("test-plane", broker=redis_url, backend=redis_url)
        policy, _ = protocol.validate_policy({"r_max": 4, "sla_p99_ms": 4000.0})
        assert policy is not None
        result = client.send_task(
            task_name("apply_policy"),
            kwargs={"policy": policy.wire(), "policy_name": "cli", "version": 7},
            queue=protocol.node_queue(name),
        ).get(timeout=90)
        assert result["version"] == 7 and max(result["ranks"].values()) <= 4
        assert result["placement"]["inference_cpus"]
        services.wait_until(
            lambda: any(
                e["kind"] == "policy" and e["detail"].get("version") == 7
                for s in plane.samples.values()
                for e in s["events"]
            ),
            30,
            "the policy event in telemetry",
            0.5,
        )
        seqs = plane.seqs(name)
        assert seqs == list(range(len(seqs))) and plane.duplicates == 0
        node.send_signal(signal.SIGTERM)
        assert node.wait(timeout=60) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        plane.down()


def test_the_node_worker_starts_the_runtime_itself(redis_url, tmp_path):
    """`celery -A nodeworker.celery_app worker` with NODE_RUNTIME=1: the same node, started by
    its worker; control tasks reach it and it stops with the worker."""
    from celery import Celery

    plane = FakePlane().up()
    name = f"wrk-{uuid.uuid4().hex[:6]}"
    env = services.node_env(
        redis_url,
        LIVEUPDATE_DATA_DIR=str(tmp_path),
        NODE_RUNTIME="1",
        NODE_NAME=name,
        NODE_REPLAY="synthetic",
        NODE_QPS="30",
        NODE_SLA_MS="5000",
        NODE_CONTROL_PLANE=plane.url,
        NODE_TOKEN=TOKEN,
    )
    client = Celery("test-plane", broker=redis_url, backend=redis_url)
    try:
        with services.celery_worker(
            env, "nodeworker.celery_app", protocol.node_queue(name), tmp_path / "worker.log"
        ) as worker:
            services.wait_until(
                lambda: worker.poll() is None and len(plane.seqs(name)) >= 2,
                120,
                "telemetry from the worker's node",
                0.5,
            )
            paused = client.send_task(task_name("pause"), queue=protocol.node_queue(name))
            assert paused.get(timeout=60) == {"throttle": "paused"}
            services.wait_until(
                lambda: any(
                    s["throttle"] == "paused" and s["trainer_duty"] == 0
                    for s in plane.samples.values()
                ),
                30,
                "a paused sample",
                0.5,
            )
        shm = [p for p in os.listdir("/dev/shm") if p.startswith(f"liveupdate-{name}-")]
        assert shm == []  # the runtime stopped with the worker and cleaned up
    finally:
        plane.down()
