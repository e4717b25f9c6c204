import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.protocol.events import NodeEvent
from nodeworker.telemetry import CpuSampler, NodeSnapshot, Spool, TelemetryReporter
from tests.fake_plane import TOKEN, FakePlane
from tests.services import wait_until

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def plane():
    p = FakePlane().up()
    yield p
    p.down()


def counter_snapshot():
    n = iter(range(10**9))

    def collect():
        i = next(n)
        return NodeSnapshot(
            qps=float(i),
            p50_ms=1.0,
            p95_ms=2.0,
            p99_ms=3.0,
            memory_overhead_bytes=100.0,
            memory_overhead_pct=0.5,
            trainer_samples_per_s=10.0,
            trainer_duty=0.5,
            throttle="throttled",
            tables={"user": {"rank": 4, "memory_bytes": 100.0, "memory_pct": 0.5}},
            events=[NodeEvent("qos", time.time(), {"action": "increase"})],
        )

    return collect


def reporter(plane, spool_dir, **kw):
    return TelemetryReporter(
        "edge-1", plane.url, TOKEN, spool_dir, counter_snapshot(), timeout_s=2.0, **kw
    )


def test_outage_then_recovery_loses_and_duplicates_nothing(plane, tmp_path):
    rep = reporter(plane, tmp_path, batch_max=4)
    for _ in range(3):
        rep.record()
    while not rep.flush_once():
        pass
    assert plane.seqs() == [0, 1, 2]
    plane.down()
    for _ in range(10):
        rep.record()
    assert rep.flush_once() is False and "ConnectionError" in rep.last_error
    assert len(rep.spool.pending(100)) == 10
    plane.up()
    plane.mode = "fail"
    assert rep.flush_once() is False and rep.last_error.startswith("HTTP 500")
    plane.mode = "up"
    while not rep.flush_once():
        pass
    assert plane.seqs() == list(range(13)) and plane.duplicates == 0
    epoch = rep.spool.epoch
    qps = [plane.samples[("edge-1", epoch, s)]["qps"] for s in range(13)]
    assert qps == [float(s) for s in range(13)]
    assert rep.spool.path.read_text() == ""  # compacted once everything is acked


def test_restart_continues_the_sequence_and_resends_the_spool(plane, tmp_path):
    plane.down()
    first = reporter(plane, tmp_path)
    for _ in range(5):
        first.record()
    assert first.flush_once() is False
    del first  # the process "dies" with 5 samples spooled
    second = reporter(plane, tmp_path)
    assert second.spool.next_seq == 5 and len(second.spool.pending(100)) == 5
    second.record()
    plane.up()
    while not second.flush_once():
        pass
    assert plane.seqs() == list(range(6)) and plane.duplicates == 0
    third = reporter(plane, tmp_path)
    assert third.spool.next_seq == 6 and third.spool.pending(10) == []


def test_every_batch_says_what_the_node_runs_now(plane, tmp_path):
    running = [protocol_telemetry.RunningState(None, None)]
    rep = reporter(plane, tmp_path / "spool", running=lambda: running[0])
    rep.record()
    assert rep.flush_once()
    running[0] = protocol_telemetry.RunningState(
        7, "sha256:" + "ab" * 32
    )  # a policy and a rebase later
    rep.record()
    assert rep.flush_once()
    assert plane.running == [protocol_telemetry.RunningState(None, None), running[0]]
    plain = reporter(plane, tmp_path / "spool2")  # a reporter told nothing sends no "running"
    plain.record()
    assert plain.flush_once() and plane.running[-1] is None


def test_invalid_batch_is_kept_aside_not_retried_forever(plane, tmp_path):
    spool = Spool(tmp_path)
    spool.append(lambda seq: {"seq": seq, "ts": 1.0, "qps": -1})  # bypasses validation
    rep = reporter(plane, tmp_path)
    assert rep.flush_once() is True
    rejected = json.loads((tmp_path / "rejected.jsonl").read_text())
    assert "samples[0].qps" in rejected["reason"] and rejected["samples"][0]["seq"] == 0
    rep.record()
    assert rep.flush_once() and plane.seqs() == [1]


def test_background_threads_ride_through_an_outage(plane, tmp_path):
    rep = reporter(plane, tmp_path, interval_s=0.05, max_backoff_s=0.2).start()
    wait_until(lambda: len(plane.seqs()) >= 5, 10, "first samples")
    plane.down()
    time.sleep(0.6)
    plane.up()
    time.sleep(0.3)
    rep.stop()
    wait_until(lambda: rep.flush_once(), 10, "spool drained")
    seqs = plane.seqs()
    assert seqs == list(range(rep.spool.next_seq)) and len(seqs) >= 10
    assert plane.duplicates == 0


CHILD = textwrap.dedent(
    """
    import sys, time
    from tests.unit.test_telemetry import counter_snapshot
    from nodeworker.telemetry import TelemetryReporter
    rep = TelemetryReporter("edge-1", sys.argv[1], "node-token-123", sys.argv[2],
                            counter_snapshot(), interval_s=0.01, timeout_s=1.0,
                            max_backoff_s=0.1)
    rep.start()
    print("started", flush=True)
    time.sleep(60)
    """
)


def test_kill_9_loses_nothing_that_was_spooled(plane, tmp_path):
    def run_child():
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, plane.url, str(tmp_path)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout.readline().strip() == "started"
        return proc

    proc = run_child()
    wait_until(lambda: len(plane.seqs()) >= 20, 20, "samples from the child")
    plane.down()
    time.sleep(0.5)  # samples pile up in the spool
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    spooled = len(Spool(tmp_path).pending(10**6))
    assert spooled > 0
    plane.up()
    proc = run_child()
    wait_until(lambda: len(plane.seqs()) >= 20 + spooled + 20, 20, "the spool and new samples")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    seqs = plane.seqs()
    assert seqs == list(range(len(seqs)))  # contiguous: no gap, and the plane deduped by seq


def test_cpu_sampler_reads_per_core_busy(tmp_path):
    stat = tmp_path / "proc/stat"
    stat.parent.mkdir()
    stat.write_text("cpu  1 1 1 1 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0\n")
    sampler = CpuSampler(tmp_path)
    stat.write_text("cpu  1 1 1 1 0 0 0 0\ncpu0 175 0 0 125 0 0 0 0\ncpu1 0 0 10 290 0 0 0 0\n")
    assert sampler.sample() == [75.0, 10.0]
    assert all(0 <= p <= 100 for p in CpuSampler().sample())
