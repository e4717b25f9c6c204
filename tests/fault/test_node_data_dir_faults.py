"""Issue 17's fault tests of a node's data dir, with real ``liveupdate node run`` processes
against a real control plane (PostgreSQL, Redis):

- a node restarted with an empty data dir (new volume, re-provisioned host) numbers its samples
  from 0 again in a new epoch, and every one is stored (failure 1: they were answered
  "duplicate" and lost);
- the disk under the node's telemetry spool fills up during a control-plane outage and stays
  full while the plane comes back: nothing the node process holds is lost and the sender keeps
  going (failures 5 and the goal "a full disk during a plane outage"). The spool sits on a
  256 KiB tmpfs mounted in the node's own mount namespace (``unshare``), filled by this test."""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from tests import services
from tests.fault.support import NodeProcess, Plane, assert_exactly_once, plane_and_node, wait_for


def stored(plane: Plane, name: str) -> dict[int, list[int]]:
    """epoch -> the stored seqs of that epoch, in order."""
    by_epoch: dict[int, list[int]] = {}
    for epoch, seq in plane.query(
        "SELECT t.epoch, t.seq FROM controlplane_telemetrysample t JOIN controlplane_node n "
        "ON n.id = t.node_id WHERE n.name = %s ORDER BY t.epoch, t.seq",
        name,
    ):
        by_epoch.setdefault(epoch, []).append(seq)
    return by_epoch


def test_a_node_restarted_with_an_empty_data_dir_is_stored_in_a_new_epoch(
    fresh_postgres_db, redis_url, tmp_path
):
    with plane_and_node(fresh_postgres_db, redis_url, tmp_path, "blank") as (plane, node):
        name = node.name
        node.start()
        wait_for(lambda: len(plane.seqs(name)) >= 12, 120, "the first run's telemetry", node)
        node.stop()
        before = stored(plane, name)
        assert len(before) == 1
        shutil.rmtree(node.data_dir)  # a new volume: no spool, no epoch, no snapshot

        node.start()
        wait_for(
            lambda: [len(s) >= 12 for s in stored(plane, name).values()] == [True, True],
            120,
            "the second run's telemetry, in a new epoch",
            node,
        )
        node.stop()
        after = stored(plane, name)
        (old_epoch,) = before
        (new_epoch,) = set(after) - {old_epoch}
        assert after[old_epoch] == before[old_epoch]  # the old epoch's samples are untouched
        assert_exactly_once(after[old_epoch])
        assert_exactly_once(after[new_epoch])  # numbered from 0 again, every one stored


def own_mount_namespace(spool: Path) -> tuple[str, ...]:
    """A command prefix that runs the node in a mount namespace of its own with a 256 KiB tmpfs
    on ``spool`` (unprivileged, through a user namespace)."""
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run(
            [unshare or "unshare", "-rm", "true"], capture_output=True, timeout=30, check=False
        )
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        reason = "unshare -rm (user and mount namespaces) is not available here"
        if services.IN_CI:
            pytest.fail(reason)
        pytest.skip(reason)
    mount = 'mount -t tmpfs -o size=256k tmpfs "$0" && exec "$@"'
    return (unshare or "unshare", "-rm", "sh", "-c", mount, str(spool))


def fill(directory: Path) -> Path:
    """Write a file in ``directory`` until its file system is full; the file."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:  # unbuffered: close() has nothing left to write
        try:
            while True:
                f.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    return filler


def test_a_full_disk_during_a_plane_outage_loses_nothing(fresh_postgres_db, redis_url, tmp_path):
    plane = Plane(fresh_postgres_db, redis_url, tmp_path).start()
    name = f"fulldisk-{uuid.uuid4().hex[:6]}"
    data_dir = tmp_path / name
    (data_dir / "telemetry").mkdir(parents=True)
    wrapper = own_mount_namespace(data_dir / "telemetry")
    token = plane.create_node(name)
    node = NodeProcess(name, plane.url, token, data_dir, redis_url, wrapper=wrapper)
    try:
        node.start()
        assert node.process is not None
        # the node's view of its spool: the tmpfs exists in its mount namespace only
        spool = Path(f"/proc/{node.process.pid}/root") / str(data_dir / "telemetry").lstrip("/")
        wait_for(lambda: len(plane.seqs(name)) >= 4, 120, "telemetry before the outage", node)

        plane.stop()
        filler = fill(spool)
        time.sleep(8)  # samples go on being taken, the spool cannot write them
        log = node.log_path.read_text()
        assert "No space left on device" in log and "kept in memory" in log

        plane.start()  # the disk is still full: acks cannot be recorded either
        held = len(plane.seqs(name)) + 8
        wait_for(lambda: len(plane.seqs(name)) >= held, 90, "the samples held in memory", node)
        filler.unlink()  # room again: the spool is rewritten and goes on
        more = len(plane.seqs(name)) + 3
        wait_for(lambda: len(plane.seqs(name)) >= more, 60, "telemetry after the disk", node)
        assert not (spool / "rejected.jsonl").exists()  # nothing set aside either
        node.stop()
        assert_exactly_once(plane.seqs(name))
    finally:
        node.stop()
        plane.stop()
