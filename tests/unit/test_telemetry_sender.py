"""The node's sender never gives up on good data (issue 17, failures 5 and 7): batches capped by
bytes and split on 413, refused samples set aside with the plane's reason while the rest is
sent, a sample that makes the plane fail (5xx) isolated by bisection, and a disk that fails
while an ack is recorded does not stop the sender thread."""

from __future__ import annotations

import errno
import json

import pytest

from nodeworker import telemetry_spool
from nodeworker.telemetry import TelemetryReporter
from tests.fake_plane import TOKEN, FakePlane
from tests.services import wait_until
from tests.unit.test_telemetry import counter_snapshot


@pytest.fixture
def make_plane():
    planes = []

    def make(rule=None):
        planes.append(FakePlane(rule).up())
        return planes[-1]

    yield make
    for plane in planes:
        plane.down()


def reporter(plane, spool_dir, **kw) -> TelemetryReporter:
    kw.setdefault("timeout_s", 5.0)
    return TelemetryReporter("edge-1", plane.url, TOKEN, spool_dir, counter_snapshot(), **kw)


def drain(rep, limit=200) -> None:
    for _ in range(limit):
        if rep.flush_once():
            return
    raise AssertionError(f"not drained: {rep.last_error}")


def rejected(spool_dir) -> list[dict]:
    path = spool_dir / "rejected.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_backlog_is_sent_in_batches_under_the_byte_cap_and_split_on_413(make_plane, tmp_path):
    limit = 6000
    plane = make_plane(lambda b: (413, {"detail": "too large"}) if len(b.samples) > 3 else None)
    rep = reporter(plane, tmp_path, batch_max=200, batch_max_bytes=limit)
    for _ in range(40):
        rep.record()
    drain(rep)
    assert plane.seqs() == list(range(40)) and rejected(tmp_path) == []
    assert max(plane.bodies) <= limit + 200  # the envelope around the capped samples
    assert rep.set_aside == 0


def test_only_the_refused_samples_are_set_aside_with_the_reason(make_plane, tmp_path):
    def rule(batch):
        bad = [i for i, s in enumerate(batch.samples) if s["seq"] in (3, 7)]
        if bad:
            return 400, {f"samples[{i}].qps": ["Must be >= 0."] for i in bad}
        conflict = [s["seq"] for s in batch.samples if s["seq"] == 11]
        if conflict:
            return 409, {"detail": "other content", "conflicts": conflict}
        return None

    plane = make_plane(rule)
    rep = reporter(plane, tmp_path)
    for _ in range(15):
        rep.record()
    drain(rep)
    assert plane.seqs() == [s for s in range(15) if s not in (3, 7, 11)]
    aside = rejected(tmp_path)
    assert sorted(s["seq"] for r in aside for s in r["samples"]) == [3, 7, 11]
    assert any("conflicts" in r["reason"] for r in aside)


def test_a_sample_that_breaks_the_plane_is_bisected_out(make_plane, tmp_path):
    poison = 13
    plane = make_plane(
        lambda b: (500, {"detail": "boom"}) if any(s["seq"] == poison for s in b.samples) else None
    )
    rep = reporter(plane, tmp_path, bisect_after=2)
    for _ in range(40):
        rep.record()
    drain(rep, limit=500)
    assert plane.seqs() == [s for s in range(40) if s != poison]
    (aside,) = rejected(tmp_path)
    assert [s["seq"] for s in aside["samples"]] == [poison] and aside["reason"]["status"] == 500


def test_a_plane_failing_for_everything_loses_nothing(make_plane, tmp_path):
    plane = make_plane(lambda b: (503, {"detail": "down"}))
    rep = reporter(plane, tmp_path, bisect_after=2)
    for _ in range(10):
        rep.record()
    for _ in range(60):
        assert rep.flush_once() is False
    assert rejected(tmp_path) == [] and len(rep.spool.pending(100)) == 10
    plane.rule = None
    drain(rep)
    assert plane.seqs() == list(range(10))


def test_the_sender_survives_a_disk_error_while_recording_an_ack(make_plane, tmp_path, monkeypatch):
    plane = make_plane()
    real = telemetry_spool._replace
    failing = {"on": True}

    def replace(path, text):
        if failing["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, text)

    rep = reporter(plane, tmp_path, interval_s=0.05, max_backoff_s=0.2)
    monkeypatch.setattr(telemetry_spool, "_replace", replace)
    rep.start()
    try:
        wait_until(lambda: len(plane.seqs()) >= 5, 10, "samples sent while the disk is full")
        assert rep.spool.disk_errors > 0
        failing["on"] = False
        count = len(plane.seqs())
        wait_until(lambda: len(plane.seqs()) >= count + 5, 10, "samples after the disk recovered")
    finally:
        rep.stop()
    assert all(t.is_alive() is False for t in rep._threads)
    drain(rep)
    assert plane.seqs() == list(range(rep.spool.next_seq))


def test_an_empty_spool_is_a_new_epoch_and_an_old_spool_keeps_epoch_0(tmp_path):
    a = telemetry_spool.Spool(tmp_path / "a")
    b = telemetry_spool.Spool(tmp_path / "b")
    assert a.epoch != b.epoch and telemetry_spool.Spool(tmp_path / "a").epoch == a.epoch
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "acked").write_text("41")
    spool = telemetry_spool.Spool(legacy)
    assert spool.epoch == 0 and spool.next_seq == 42


def test_a_full_disk_during_a_plane_outage_loses_nothing_the_process_holds(
    make_plane, tmp_path, monkeypatch
):
    plane = make_plane(lambda b: (503, {"detail": "down"}))
    rep = reporter(plane, tmp_path)
    rep.record()
    real_path, real_replace = rep.spool.path, telemetry_spool._replace

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(telemetry_spool, "_replace", full)
    rep.spool.path = tmp_path / "full-disk" / "spool.jsonl"  # every append fails too
    for _ in range(10):
        rep.record()  # spooled in memory only; the error is logged, not raised
    assert rep.flush_once() is False and rep.spool.disk_errors >= 10
    monkeypatch.setattr(telemetry_spool, "_replace", real_replace)
    rep.spool.path = real_path
    plane.rule = None  # the plane is back, the disk has room again
    drain(rep)
    assert plane.seqs() == list(range(11)) and rejected(tmp_path) == []
    assert rep.spool.path.read_text() == ""  # rewritten whole once the disk worked
