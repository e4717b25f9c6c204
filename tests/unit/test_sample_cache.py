import threading

import pytest
import torch

from dlrm_core.batch import SparseBatch
from nodeworker.sample_cache import Feedback, SampleCache, SampleCacheConfig
from tests.unit.cache_support import put_batch


def served(first_id: int, n: int, t: float = 0.0) -> SparseBatch:
    """n requests: 'user' one-hot = request id, 'tags' multi-hot of (id % 3) ids."""
    ids = list(range(first_id, first_id + n))
    return SparseBatch.from_ids(
        ["user", "tags"],
        [[[i] for i in ids], [[i, i + 1000][: i % 3] for i in ids]],
        dense=torch.tensor([[float(i)] for i in ids]),
        labels=torch.zeros(n),
        timestamps=torch.full((n,), t, dtype=torch.float64),
        request_ids=torch.tensor(ids),
    )


def test_feedback_joins_rows_with_their_own_features():
    cache = SampleCache(SampleCacheConfig(label_window_s=10.0))
    put_batch(cache, served(0, 5), now=0.0)
    put_batch(cache, served(5, 5), now=1.0)
    assert cache.feedback(7, 1.0, now=2.0) is Feedback.JOINED
    assert cache.feedback(2, 0.0, now=2.5) is Feedback.JOINED
    assert cache.feedback(4, 1.0, now=3.0) is Feedback.JOINED
    rows = cache.take(10, now=3.0)
    b = rows.batch
    assert b.request_ids.tolist() == [7, 2, 4]  # arrival order, across two served batches
    assert b.labels.tolist() == [1.0, 0.0, 1.0]
    assert b.dense[:, 0].tolist() == [7.0, 2.0, 4.0]
    values, offsets = b.feature("user")
    assert values.tolist() == [7, 2, 4] and offsets.tolist() == [0, 1, 2]
    tag_values, tag_offsets = b.feature("tags")
    assert tag_values.tolist() == [7, 2, 1002, 4] and tag_offsets.tolist() == [0, 1, 3]
    assert rows.label_times.tolist() == [2.0, 2.5, 3.0]
    assert cache.take(10, now=3.0) is None
    assert cache.counts.joined == 3 and cache.counts.taken == 3 and cache.counts.served == 10


def test_timeouts_become_negatives_and_late_or_unknown_feedback_is_told_apart():
    cache = SampleCache(SampleCacheConfig(label_window_s=5.0))
    put_batch(cache, served(0, 3), now=0.0)
    put_batch(cache, served(3, 2), now=4.0)
    assert cache.feedback(1, 1.0, now=1.0) is Feedback.JOINED
    assert cache.expire(now=5.0) == 2  # ids 0 and 2 timed out; 3, 4 still inside the window
    assert cache.feedback(0, 1.0, now=5.5) is Feedback.GONE  # too late
    assert cache.feedback(1, 1.0, now=5.5) is Feedback.GONE  # already labelled
    assert cache.feedback(99, 1.0, now=5.5) is Feedback.UNKNOWN
    assert cache.feedback(-1, 1.0, now=5.5) is Feedback.UNKNOWN
    rows = cache.take(10, now=5.5)
    assert rows.batch.request_ids.tolist() == [1, 0, 2]
    assert rows.batch.labels.tolist() == [1.0, 0.0, 0.0]
    assert rows.label_times.tolist() == [1.0, 5.0, 5.0]  # a negative is known at its timeout
    assert cache.sizes() == {"pending": 2, "ready": 0, "held": 2}
    rows = cache.take(10, now=100.0)  # take() expires too
    assert rows.batch.request_ids.tolist() == [3, 4] and cache.sizes()["held"] == 0
    c = cache.counts
    assert (c.expired, c.late_feedback, c.unknown_feedback) == (4, 2, 2)


def test_bounded_memory_drops_oldest_and_counts_them():
    cache = SampleCache(SampleCacheConfig(label_window_s=60.0, max_pending=4, max_ready=2))
    put_batch(cache, served(0, 3), now=0.0)
    put_batch(cache, served(3, 3), now=1.0)  # 6 pending > 4: ids 0, 1 dropped
    assert cache.counts.dropped_pending == 2
    assert cache.feedback(0, 1.0, now=2.0) is Feedback.GONE
    for rid in (2, 3, 4):
        assert cache.feedback(rid, 1.0, now=2.0) is Feedback.JOINED
    assert cache.counts.dropped_ready == 1  # ready holds 2: the joined row 2 went
    assert cache.take(10, now=2.0).batch.request_ids.tolist() == [3, 4]
    cache.take(10, now=1000.0)
    assert cache.sizes() == {"pending": 0, "ready": 0, "held": 0}  # nothing leaks
    c = cache.counts
    accounted = c.joined + c.expired + c.dropped_pending
    assert accounted == c.served == 6 and c.taken + c.dropped_ready == c.joined + c.expired


def test_ids_must_increase():
    cache = SampleCache()
    put_batch(cache, served(10, 2), now=0.0)
    with pytest.raises(ValueError, match="increase"):
        put_batch(cache, served(5, 2), now=0.0)


def test_concurrent_feedback_and_take_lose_nothing():
    cache = SampleCache(SampleCacheConfig(label_window_s=1e6))
    n = 4000
    for start in range(0, n, 100):
        put_batch(cache, served(start, 100), now=0.0)
    taken: list[int] = []
    done = threading.Event()

    def consumer():
        while not done.is_set() or cache.sizes()["ready"]:
            rows = cache.take(64, now=1.0)
            if rows is not None:
                taken.extend(rows.batch.request_ids.tolist())

    def producer(parity: int):
        for rid in range(parity, n, 2):
            assert cache.feedback(rid, float(rid % 2), now=1.0) is Feedback.JOINED

    threads = [threading.Thread(target=producer, args=(p,)) for p in (0, 1)]
    reader = threading.Thread(target=consumer)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join(timeout=30)
    assert sorted(taken) == list(range(n))
