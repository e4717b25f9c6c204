"""RuntimeMetrics' freshness lag (a trainer's install lags, else the age of a sync's labels) and the
node's measured LoRA memory against /proc."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

import numpy as np

from dlrm_core.malloc_policy import bound_native_heap
from nodeworker.feed import FeedReport
from nodeworker.runtime_metrics import (
    LagRing,
    MeasuredMemory,
    RuntimeMetrics,
    TimedRing,
    ValueRing,
    smaps_rollup,
    touched,
)
from nodeworker.trainer_messages import TrainerStats


def test_a_delta_sync_node_ages_from_its_last_sync():
    metrics = RuntimeMetrics()
    assert metrics.window(1000.0)["freshness_lag_s"] is None  # nothing trained, nothing synced
    metrics.synced(landed_at=1000.0, label_at=970.0)
    assert metrics.window(1000.0)["freshness_lag_s"] == 30.0
    assert metrics.window(1010.0)["freshness_lag_s"] == 40.0  # older until the next sync
    metrics.synced(landed_at=1020.0, label_at=None)  # an unstamped delta: from its landing
    assert metrics.window(1025.0)["freshness_lag_s"] == 5.0
    metrics.synced(landed_at=1030.0, label_at=1040.0)  # a stamp ahead of the node's clock
    assert metrics.window(1030.0)["freshness_lag_s"] == 0.0


def test_install_lags_win_over_a_sync():
    metrics = RuntimeMetrics()
    metrics.synced(landed_at=1000.0, label_at=900.0)
    metrics.installed(3, 1001.0, 0.0, 0.0)
    metrics.trained(_stats(samples=10, fresh=[(3, [999.5])]), 1001.0)
    assert metrics.window(1002.0)["freshness_lag_s"] == 1.5


def _stats(samples: int, fresh: list[tuple[int, list[float]]], skipped: int = 0) -> TrainerStats:
    feed = FeedReport({}, {}, 0, 0, np.zeros(0), np.zeros(0))
    return TrainerStats(1, samples, skipped, 3, {}, {}, (), tuple(fresh), feed, 0.0)


def test_skipped_batches_never_go_back_when_a_new_trainer_counts_from_zero():
    """Telemetry sends the skipped batches since its last sample (ingest refuses a negative
    count): a restarted trainer's own counter starts again at 0."""
    metrics = RuntimeMetrics()
    metrics.trained(_stats(100, [], skipped=5), 1000.0)
    assert metrics.skipped == 5
    metrics.trainer_started()
    metrics.trained(_stats(10, [], skipped=1), 1001.0)
    assert metrics.skipped == 6 and metrics.trainer_rate == 0.0  # not (10 - 100) / 1 s
    metrics.trained(_stats(30, [], skipped=2), 1002.0)
    assert metrics.skipped == 7 and metrics.trainer_rate == 20.0


def in_a_node_process(check, *args) -> None:
    """Run ``check`` in a fresh interpreter with the node's malloc settings, as a node's
    processes run: in the suite's long-lived process, arrays freed by earlier tests leave
    resident heap that a new array may reuse, so /proc would not see it arrive."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pool.apply(check, args)


def _measured_memory_follows_anonymous_pages_and_slots(tmp: str) -> None:
    bound_native_heap()
    tmp_path = Path(tmp)
    slots = tmp_path / "factors-user.bin"
    with slots.open("wb") as f:
        f.truncate(8 << 20)  # sparse: nothing allocated yet
    (tmp_path / "base-user.f32").write_bytes(b"\0" * (1 << 20))  # not a slot: not counted
    memory = MeasuredMemory(tmp_path)
    me = os.getpid()
    first = memory.measure(me, account_bytes=6000)
    assert first == 6000  # the account when first seen (the slots hold nothing yet)
    held = np.ones(48 << 20, dtype=np.uint8)  # touched: 48 MiB of anonymous pages
    with slots.open("r+b") as f:
        f.write(b"\1" * (1 << 20))
    grown = memory.measure(me, account_bytes=999_999)  # the account moves; the OS decides
    assert 47 << 20 <= grown - first - (1 << 20) <= 52 << 20, grown - first
    assert held.sum() == 48 << 20
    assert memory.measure(None, 5000) == 1 << 20  # no trainer: the slots
    gone = 2**22 + 12345  # above the default pid_max: no such process
    assert memory.measure(gone, 5000) == 1 << 20
    rollup = smaps_rollup(me)
    assert rollup is not None and rollup["Pss"] > 0 and rollup["Pss_Anon"] >= 48 << 20


def test_measured_memory_follows_the_trainers_anonymous_pages_and_the_slots(tmp_path):
    """MeasuredMemory against /proc: a fresh process stands in for the trainer; 48 MiB it
    touches after the first measurement show up in the measured bytes, as do the factor slots'
    written blocks."""
    in_a_node_process(_measured_memory_follows_anonymous_pages_and_slots, str(tmp_path))


def test_the_lag_ring_keeps_the_newest_lags_and_wraps():
    ring = LagRing(5)
    assert ring.since(0.0) == []
    ring.extend(10.0, [9.0, 8.5, 11.0])  # a label newer than the install lags 0
    assert sorted(ring.since(0.0)) == [0.0, 1.0, 1.5]
    ring.extend(20.0, [19.0, 18.0, 17.0])  # wraps: the oldest (10.0's first) is gone
    assert sorted(ring.since(0.0)) == [0.0, 1.0, 1.5, 2.0, 3.0]
    assert sorted(ring.since(15.0)) == [1.0, 2.0, 3.0]
    ring.extend(30.0, [float(t) for t in range(20, 28)])  # more than it holds: the newest 5
    assert sorted(ring.since(0.0)) == [3.0, 4.0, 5.0, 6.0, 7.0]


def test_install_times_keep_the_newest_and_read_oldest_first():
    ring = TimedRing(3)
    assert ring.since(0.0) == [] and len(ring) == 0
    for i in range(5):  # wraps: the two oldest are gone
        ring.append((10.0 + i, 0.1 * i, 0.01 * i))
    assert len(ring) == 3
    assert ring.since(0.0) == [(0.1 * i, 0.01 * i) for i in (2, 3, 4)]
    assert ring.since(13.0) == [(0.30000000000000004, 0.03), (0.4, 0.04)]
    metrics = RuntimeMetrics()
    metrics.installed(1, 100.0, 0.002, 0.0005)
    metrics.installed(2, 101.0, 0.004, 0.001)
    stalls = metrics.stalls(since=100.5)
    assert stalls["installs"] == 1 and stalls["install_read_mean_ms"] == 4.0
    assert stalls["install_locked_max_ms"] == 1.0


def _a_touched_ring_is_resident_when_made() -> None:
    bound_native_heap()
    me = os.getpid()
    before = smaps_rollup(me)["Pss_Anon"]  # type: ignore[index]
    ring = touched(4 << 20)  # 32 MiB of float64
    after = smaps_rollup(me)["Pss_Anon"]  # type: ignore[index]
    assert after - before >= 30 << 20 and not ring.any(), after - before
    lazy = np.zeros(4 << 20)
    assert smaps_rollup(me)["Pss_Anon"] - after < 4 << 20  # type: ignore[index]
    assert lazy.shape == ring.shape


def test_a_fixed_ring_is_resident_from_the_start_not_as_it_fills():
    """/proc: a touched array's pages count when it is made (np.zeros maps zero pages the OS
    counts only once written: a bounded ring then reads as memory growing with time)."""
    in_a_node_process(_a_touched_ring_is_resident_when_made)


def test_the_latency_ring_keeps_the_newest_oldest_first_and_clears():
    ring = ValueRing(4)
    assert list(ring) == [] and len(ring) == 0
    for v in range(3):
        ring.append(float(v))
    assert list(ring) == [0.0, 1.0, 2.0]
    for v in range(3, 7):  # wraps
        ring.append(float(v))
    assert list(ring) == [3.0, 4.0, 5.0, 6.0] and len(ring) == 4
    ring.clear()
    assert list(ring) == []
    ring.append(9.0)
    assert list(ring) == [9.0]


def test_the_runtime_metrics_do_not_grow_with_time():
    """300k requests and 20k collections: the per-request and per-pause records are fixed
    rings, resident from the start (deques of boxed floats and tuples grew ~20 MiB here)."""
    in_a_node_process(_runtime_metrics_stay_flat)


def _runtime_metrics_stay_flat() -> None:
    bound_native_heap()
    me = os.getpid()
    metrics = RuntimeMetrics()
    metrics.served(1.0, 0.5, 0.0)
    before = smaps_rollup(me)["Pss_Anon"]  # type: ignore[index]
    for i in range(300_000):
        metrics.served(1.0 + i % 7, 0.5, i / 1000)
        if i % 1000 == 0:  # telemetry reads the last second's window every second
            metrics.latency.count(i / 1000)
    for i in range(20_000):
        metrics.gc_callback("start", {"generation": 0})
        metrics.gc_callback("stop", {"generation": i % 3})
    grown = smaps_rollup(me)["Pss_Anon"] - before  # type: ignore[index]
    assert grown < 2 << 20, grown
    assert len(metrics.all_latencies) == 300_001 and metrics.stalls()["gc_pauses"] == 10_000
