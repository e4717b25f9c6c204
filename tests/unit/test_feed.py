"""The feed: served requests and labels cross to the joining process through shared-memory rings,
and the join there keeps the sample cache's semantics."""

from __future__ import annotations

import multiprocessing as mp
import struct

import numpy as np
import pytest
import torch

from nodeworker import feed as feed_module
from nodeworker.feed import Feed, FeedConfig, FeedReport, FeedWriter
from nodeworker.feed_rings import ByteRing, FeedRings, record_spans
from nodeworker.join_counts import JoinCounts
from nodeworker.sample_cache import Feedback
from tests.unit.test_sample_cache import served


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def feed_pair(tmp_path, window=10.0, **config):
    clock = Clock()
    rings = FeedRings.open(tmp_path, create=True, served_bytes=1 << 16, label_bytes=1 << 12)
    writer = FeedWriter(rings, window, capacity=1000, clock=clock)
    reader_rings = FeedRings.open(tmp_path, create=False, served_bytes=1 << 16, label_bytes=1 << 12)
    feed = Feed(
        reader_rings,
        ("user", "tags"),
        1,
        FeedConfig(label_window_s=window, batch_rows=4, **config),
        clock=clock,
    )
    return clock, writer, feed


def serve(writer: FeedWriter, first: int, n: int, at: float) -> None:
    writer.serve(served(first, n), torch.arange(n, dtype=torch.float32) / 10, first, at)


def test_labels_join_their_own_rows_across_the_rings(tmp_path):
    clock, writer, feed = feed_pair(tmp_path)
    serve(writer, 0, 5, at=0.0)
    serve(writer, 5, 5, at=1.0)
    clock.now = 2.0
    assert writer.feedback(7, 1.0) is Feedback.JOINED
    clock.now = 2.5
    assert writer.feedback(2, 0.0) is Feedback.JOINED
    clock.now = 3.0
    assert writer.feedback(4, 1.0) is Feedback.JOINED
    assert feed.poll(now=3.0) == 3
    batch, label_times = feed.next_batch()
    assert batch.request_ids.tolist() == [7, 2, 4]  # arrival order, across two requests
    assert batch.labels.tolist() == [1.0, 0.0, 1.0]
    assert batch.dense[:, 0].tolist() == [7.0, 2.0, 4.0]
    assert batch.feature("user")[0].tolist() == [7, 2, 4]
    values, offsets = batch.feature("tags")
    assert values.tolist() == [7, 2, 1002, 4] and offsets.tolist() == [0, 1, 3]
    assert label_times.tolist() == [2.0, 2.5, 3.0]
    report = feed.report()
    labels, scores = report.labels, report.scores
    assert labels.tolist() == [1.0, 0.0, 1.0]
    assert scores.tolist() == pytest.approx([0.2, 0.2, 0.4])  # each row's own served score
    assert feed.next_batch() is None and feed.to_trainer == 3


def test_the_report_carries_what_the_join_holds_apart_from_the_backlog(tmp_path):
    """The join's arenas are accounted beside the budget's cap (trainer_proc.send_stats), so
    the report says their bytes: rows waiting for a label hold ~120 bytes each."""
    _, writer, feed = feed_pair(tmp_path)
    empty = feed.report().join_bytes  # the ready queue's preallocated ring
    assert empty == feed.cache.nbytes()
    serve(writer, 0, 64, at=0.0)
    feed.poll(now=0.5)
    held = feed.report().join_bytes
    assert held == feed.cache.nbytes() and held - empty >= 64 * 100
    assert feed.nbytes() == held + feed.backlog_nbytes()


def test_timeouts_become_negatives_and_feedback_is_answered_at_once(tmp_path):
    clock, writer, feed = feed_pair(tmp_path, window=5.0)
    serve(writer, 0, 3, at=0.0)
    serve(writer, 3, 2, at=4.0)
    clock.now = 1.0
    assert writer.feedback(1, 1.0) is Feedback.JOINED
    clock.now = 5.5
    assert writer.feedback(0, 1.0) is Feedback.GONE  # too late
    assert writer.feedback(1, 1.0) is Feedback.GONE  # already labelled
    assert writer.feedback(99, 1.0) is Feedback.UNKNOWN
    assert writer.feedback(-1, 1.0) is Feedback.UNKNOWN
    feed.poll(now=5.5)
    batch, label_times = feed.next_batch()
    assert batch.request_ids.tolist() == [1, 0, 2] and batch.labels.tolist() == [1.0, 0.0, 0.0]
    assert label_times.tolist() == [1.0, 5.0, 5.0]  # a negative is known at its timeout
    clock.now = 8.0
    assert writer.feedback(3, 1.0) is Feedback.JOINED  # delayed, inside its window
    feed.poll(now=100.0)  # 4 joined, 3 timed out
    assert [b.request_ids.tolist() for b, _ in feed.backlog] == [[3, 4]]
    assert [b.labels.tolist() for b, _ in feed.backlog] == [[1.0, 0.0]]
    counts = feed.report().counts
    assert (counts["joined"], counts["expired"], counts["served"]) == (2, 3, 5)
    assert writer.counts()["late_feedback"] == 2 and writer.counts()["unknown_feedback"] == 2


def test_a_label_at_the_window_edge_is_joined_as_inference_answered(tmp_path):
    """The reader replays both rings in time order: a request served later (its put expires
    old rows) must not time out a row whose label came before it."""
    clock, writer, feed = feed_pair(tmp_path, window=5.0)
    serve(writer, 0, 1, at=0.0)
    clock.now = 4.9
    assert writer.feedback(0, 1.0) is Feedback.JOINED
    serve(writer, 1, 1, at=5.2)
    feed.poll(now=5.3)
    batch, _ = feed.next_batch()
    assert batch.request_ids.tolist() == [0] and batch.labels.tolist() == [1.0]


def test_bounded_memory_drops_oldest_and_counts_them(tmp_path):
    clock, writer, feed = feed_pair(tmp_path, window=60.0, max_pending=4, backlog_batches=1)
    serve(writer, 0, 3, at=0.0)
    serve(writer, 3, 3, at=1.0)  # 6 pending > 4: ids 0, 1 dropped
    clock.now = 2.0
    for rid in range(2, 6):
        writer.feedback(rid, 1.0)
    feed.poll(now=2.0)  # joined rows 2, 3, 4, 5 in one batch of 4
    serve(writer, 6, 3, at=3.0)
    clock.now = 3.0
    for rid in range(6, 9):
        writer.feedback(rid, 0.0)
    feed.poll(now=3.0)  # a backlog of 1 batch: the older one goes
    report = feed.report()
    assert report.counts["dropped_pending"] == 2 and report.dropped_backlog == 4
    assert [b.request_ids.tolist() for b, _ in feed.backlog] == [[6, 7, 8]]
    assert len(report.labels) == 7  # every joined row scored, the dropped ones too


def test_a_full_ring_drops_and_counts_and_their_feedback_is_gone(tmp_path):
    clock, writer, feed = feed_pair(tmp_path)
    first = 0
    while writer.counts()["ring_dropped_rows"] == 0:  # the reader is not reading
        serve(writer, first, 8, at=0.0)
        first += 8
    assert writer.counts()["ring_dropped_rows"] == 8
    assert writer.feedback(first - 1, 1.0) is Feedback.GONE
    assert writer.feedback(first - 9, 1.0) is Feedback.JOINED
    feed.poll(now=0.5)
    assert feed.cache.counts.served == first - 8 and feed.cache.counts.joined == 1
    serve(writer, first, 8, at=1.0)  # room again
    assert writer.counts()["ring_dropped_rows"] == 8


def read_records(ring: ByteRing, max_bytes: int | None = None) -> list[bytes]:
    block = ring.read(max_bytes)
    return [block[at : at + length] for at, length in record_spans(block)]


def test_records_wrap_around_the_ring_intact(tmp_path):
    writer = ByteRing(tmp_path / "r", 64, create=True)
    reader = ByteRing(tmp_path / "r", 64, create=False)
    got = []
    for k in range(40):  # sizes 1..13 bytes: records straddle the end of the ring
        record = bytes([k]) * (1 + k % 13)
        assert writer.write(record)
        got += read_records(reader)
        assert got[-1] == record
    assert len(got) == 40
    assert writer.write(b"x" * 48) and not writer.write(b"y")  # 8-byte length + 48 = full
    assert read_records(reader) == [b"x" * 48]
    with pytest.raises(ValueError):
        ByteRing(tmp_path / "bad", 60, create=True)


def _write_numbered(path: str, n: int) -> None:
    ring = ByteRing(__import__("pathlib").Path(path), 4096, create=False)
    k = 0
    while k < n:
        body = struct.pack("<q", k) * (1 + k % 37)  # every 8 bytes say which record
        if ring.write(body):
            k += 1


def test_no_torn_records_from_a_writer_in_another_process(tmp_path):
    path = tmp_path / "ring"
    reader = ByteRing(path, 4096, create=True)
    n = 20_000
    proc = mp.get_context("spawn").Process(target=_write_numbered, args=(str(path), n))
    proc.start()
    seen = 0
    while seen < n:
        for record in read_records(reader):
            numbers = struct.unpack(f"<{len(record) // 8}q", record)
            assert len(numbers) == 1 + seen % 37 and set(numbers) == {seen}
            seen += 1
        assert proc.is_alive() or seen == n or reader.unread() > 0
    proc.join(timeout=30)
    assert proc.exitcode == 0


def report(joined: int, pending: int, backlog: int) -> FeedReport:
    return FeedReport(
        counts={"joined": joined, "expired": 1},
        sizes={"pending": pending, "ready": 2, "backlog_rows": backlog},
        dropped_backlog=0,
        to_trainer=joined,
        labels=np.zeros(0, np.float32),
        scores=np.zeros(0),
    )


def test_join_counts_add_up_over_trainers_and_count_what_a_stopped_one_held_as_lost():
    counts = JoinCounts()
    counts.update(report(joined=10, pending=3, backlog=4))
    counts.update(report(joined=12, pending=5, backlog=0))  # a report replaces the last one
    assert counts.totals()["joined"] == 12 and counts.totals()["pending"] == 5
    counts.retire()  # that trainer stopped holding 5 pending, 2 ready rows
    counts.update(report(joined=3, pending=1, backlog=0))
    totals = counts.totals()
    assert totals["joined"] == 15 and totals["expired"] == 2 and totals["to_trainer"] == 15
    assert totals["lost"] == 7 and totals["pending"] == 1 and totals["ready"] == 2


def test_a_ring_read_takes_whole_records_within_the_bytes_asked(tmp_path):
    ring = ByteRing(tmp_path / "r", 256, create=True)
    for k in range(6):
        assert ring.write(bytes([k]) * 20)  # 8 + 20 -> 32 bytes each
    assert ring.unread() == 192
    assert read_records(ring, max_bytes=70) == [bytes([0]) * 20, bytes([1]) * 20]
    assert read_records(ring, max_bytes=1) == [bytes([2]) * 20]  # at least one record
    assert ring.unread() == 96
    assert read_records(ring) == [bytes([k]) * 20 for k in (3, 4, 5)] and ring.unread() == 0


def test_a_poll_in_chunks_joins_every_label_with_its_row(tmp_path, monkeypatch):
    """A reader that was starved finds many requests and labels in the rings: it reads them a
    few records at a time, and a label read before its request still joins it."""
    monkeypatch.setattr(feed_module, "POLL_BYTES", 200)  # a record or two per read
    clock, writer, feed = feed_pair(tmp_path, window=100.0, backlog_batches=1000)
    for k in range(30):
        serve(writer, 3 * k, 3, at=float(k))
        clock.now = k + 0.5
        assert writer.feedback(3 * k + 1, 1.0) is Feedback.JOINED
    assert feed.poll(now=30.0) == 30
    assert feed.cache.counts.unknown_feedback == 0 and feed.cache.counts.joined == 30
    rows = []
    while (taken := feed.next_batch()) is not None:
        rows += taken[0].request_ids.tolist()
    assert rows == [3 * k + 1 for k in range(30)]


def test_a_created_ring_holds_all_its_pages_from_the_start(tmp_path):
    """A sparse ring took its pages as the head first went round: a node's memory grew for the
    first hour of traffic (nodeworker/feed_rings.py)."""
    rings = FeedRings.open(tmp_path, create=True, served_bytes=1 << 20, label_bytes=1 << 16)
    for name, capacity in (("feed-served.ring", 1 << 20), ("feed-labels.ring", 1 << 16)):
        assert (tmp_path / name).stat().st_blocks * 512 >= capacity
    rings.close()


def test_a_node_without_trainer_stops_its_join_only_after_its_last_poll(tmp_path):
    """The node closes the rings after the client: a poll still reading then raised (a join
    starved of cpu read for seconds)."""
    import threading
    import time

    from nodeworker.runtime_metrics import RuntimeMetrics
    from nodeworker.trainer_client import NoTrainer

    polled = threading.Event()
    done = threading.Event()

    class SlowFeed:
        def poll(self) -> None:
            polled.set()
            time.sleep(2.5)
            done.set()

        def report(self) -> FeedReport:
            return FeedReport({}, {}, 0, 0, np.zeros(0, np.float32), np.zeros(0))

    client = NoTrainer(RuntimeMetrics(), SlowFeed())  # type: ignore[arg-type]
    client.start(None, 0.0, 0)  # type: ignore[arg-type]
    assert polled.wait(5)
    client.close()
    assert done.is_set()
