"""A node killed with SIGKILL mid-training, and a control plane that goes away: the node comes
back with its last factor snapshot and every telemetry sample reaches the database exactly once."""

from __future__ import annotations

import json
import time

import torch
from celery import Celery

from dlrm_core.checkpoint import read_container
from dlrm_core.table_factors import FACTORS_FORMAT_VERSION, FACTORS_KIND
from tests.fault.support import Plane, assert_exactly_once, plane_and_node, wait_for


def trained(plane: Plane, name: str) -> bool:
    rows = plane.query(
        "SELECT count(*) FROM controlplane_telemetrysample t JOIN controlplane_node n "
        "ON n.id = t.node_id WHERE n.name = %s AND t.trainer_samples_per_s > 0",
        name,
    )
    return rows[0][0] >= 2


def snapshot(plane: Plane, name: str, redis_url: str) -> dict:
    """Snapshot through the API (-> Celery -> the node's worker -> the runtime); the result."""
    response = plane.api("post", f"nodes/{name}/snapshot/")
    assert response.status_code == 202, response.text
    client = Celery("fault-test", broker=redis_url, backend=redis_url)
    return client.AsyncResult(response.json()["task_id"]).get(timeout=90)


def factors(directory) -> dict[str, dict[str, torch.Tensor]]:
    out = {}
    for path in sorted(directory.glob("*.factors")):
        _, tensors = read_container(path, FACTORS_KIND, FACTORS_FORMAT_VERSION)
        out[path.stem] = {k: tensors[k] for k in ("ids", "a", "b")}
    return out


def pending_spool(data_dir) -> list[int]:
    spool = data_dir / "telemetry"
    acked = int((spool / "acked").read_text()) if (spool / "acked").exists() else -1
    seqs = []
    for line in (spool / "spool.jsonl").read_text().splitlines():
        try:
            seqs.append(json.loads(line)["seq"])
        except ValueError:
            continue  # a torn last line: never sent, not a sample
    return [s for s in seqs if s > acked]


def test_kill_9_mid_training_restores_the_snapshot_and_resends_the_spool(
    fresh_postgres_db, redis_url, tmp_path
):
    with plane_and_node(fresh_postgres_db, redis_url, tmp_path, "crash") as (plane, node):
        name = node.name
        node.start()
        wait_for(lambda: trained(plane, name), 120, "telemetry of a training node", node)
        taken = snapshot(plane, name, redis_url)
        saved = factors(node.data_dir / "snapshots" / taken["snapshot"])
        assert saved and any(t["ids"].numel() for t in saved.values()), "no factors trained"
        time.sleep(2)  # training goes on past the snapshot

        plane.stop()  # the node spools what it cannot deliver ...
        time.sleep(4)
        node.kill9()  # ... and dies holding it
        buffered = pending_spool(node.data_dir)
        assert len(buffered) >= 2, buffered

        plane.start()
        # Labels arrive after 100 s now: nothing trains, so the factors stay as restored.
        node.start(label_delay=100, label_window=200)
        restored_taken = lambda: any(  # noqa: E731
            e.get("restored") == taken["snapshot"] for e in plane.events(name, "snapshot")
        )
        wait_for(
            restored_taken,
            90,
            "the restored-snapshot event",
            node,
        )
        wait_for(lambda: set(buffered) <= set(plane.seqs(name)), 60, "the spooled samples", node)
        last = max(buffered)
        wait_for(lambda: plane.seqs(name)[-1] >= last + 3, 60, "samples after the restart", node)
        assert_exactly_once(plane.seqs(name))
        restored = next(e for e in plane.events(name, "snapshot") if e.get("restored"))
        assert restored["version"] == taken["version"]

        again = snapshot(plane, name, redis_url)
        now = factors(node.data_dir / "snapshots" / again["snapshot"])
        assert now.keys() == saved.keys()
        for table, tensors in saved.items():
            for key, value in tensors.items():
                assert torch.equal(now[table][key], value), f"{table}.{key} differs after restore"
        assert node.predict()["scores"]


def test_control_plane_outage_is_buffered_and_delivered_exactly_once(
    fresh_postgres_db, redis_url, tmp_path
):
    with plane_and_node(fresh_postgres_db, redis_url, tmp_path, "outage") as (plane, node):
        name = node.name
        node.start(qps=20)
        wait_for(lambda: len(plane.seqs(name)) >= 3, 120, "first telemetry", node)
        plane.stop()
        time.sleep(6)
        during = pending_spool(node.data_dir)
        assert len(during) >= 3, during  # at 1 Hz, ~6 samples waited in the spool
        node.check_alive()
        plane.start()
        wait_for(lambda: set(during) <= set(plane.seqs(name)), 60, "the spooled samples", node)
        wait_for(lambda: plane.seqs(name)[-1] >= max(during) + 2, 30, "live samples again", node)
        assert_exactly_once(plane.seqs(name))
