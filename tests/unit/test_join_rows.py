"""The sample cache's columnar rows (nodeworker/join_rows.py): against a plain-Python model of the
join's rules, on random traffic; the bytes a waiting row costs; arenas that shrink again."""

from __future__ import annotations

import random
from collections import OrderedDict, deque

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrm_core.batch import SparseBatch
from nodeworker.join_rows import MIN_ROWS, JoinRows, RidQueue, room_for
from nodeworker.sample_cache import Feedback, SampleCache, SampleCacheConfig
from tests.unit.cache_support import put_batch

N_DENSE = 3


def row_bags(rid: int) -> list[list[int]]:
    """Two features: one-hot of the id, a multi-hot of 0-3 values (empty bags too)."""
    return [[rid * 7], [rid * 100 + k for k in range(rid % 4)]]


def batch(ids: list[int], t: float) -> SparseBatch:
    return SparseBatch.from_ids(
        ["a", "b"],
        [[row_bags(i)[f] for i in ids] for f in range(2)],
        dense=torch.tensor([[float(i), -float(i), 0.5] for i in ids]),
        labels=torch.zeros(len(ids)),
        timestamps=torch.full((len(ids),), t, dtype=torch.float64),
        request_ids=torch.tensor(ids),
    )


class Model:
    """The join's rules, one Python object a row."""

    def __init__(self, window: float, max_pending: int, max_ready: int) -> None:
        self.window, self.max_pending, self.max_ready = window, max_pending, max_ready
        self.pending: OrderedDict[int, float] = OrderedDict()  # id -> served at
        self.ready: deque[tuple[int, float, float]] = deque()  # id, label, label time
        self.max_id = -1
        self.lost = 0  # dropped by a bound

    def put(self, ids: list[int], now: float) -> None:
        for rid in ids:
            self.pending[rid] = now
        self.max_id = ids[-1]
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)
            self.lost += 1
        self.expire(now)

    def expire(self, now: float) -> None:
        while self.pending:
            rid, served = next(iter(self.pending.items()))
            if served > now - self.window:
                return
            del self.pending[rid]
            self._ready(rid, 0.0, served + self.window)

    def _ready(self, rid: int, label: float, at: float) -> None:
        self.ready.append((rid, label, at))
        while len(self.ready) > self.max_ready:
            self.ready.popleft()
            self.lost += 1

    def feedback(self, rid: int, label: float, now: float) -> Feedback:
        self.expire(now)
        if rid in self.pending:
            del self.pending[rid]
            self._ready(rid, label, now)
            return Feedback.JOINED
        return Feedback.GONE if 0 <= rid <= self.max_id else Feedback.UNKNOWN

    def take(self, k: int, now: float) -> list[tuple[int, float, float]]:
        self.expire(now)
        return [self.ready.popleft() for _ in range(min(k, len(self.ready)))]


def check_rows(rows, expected: list[tuple[int, float, float]]) -> None:
    b = rows.batch
    ids = [rid for rid, _, _ in expected]
    assert b.request_ids.tolist() == ids
    assert b.labels.tolist() == [label for _, label, _ in expected]
    assert rows.label_times.tolist() == [at for _, _, at in expected]
    assert b.dense[:, 0].tolist() == [float(i) for i in ids]
    for f, key in enumerate(("a", "b")):
        values, offsets = b.feature(key)
        bags = [row_bags(i)[f] for i in ids]
        assert values.tolist() == [v for bag in bags for v in bag]
        assert offsets.tolist() == list(np.cumsum([0] + [len(x) for x in bags])[:-1])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    max_pending=st.sampled_from([7, 60, 10_000]),
    max_ready=st.sampled_from([5, 40, 10_000]),
)
def test_the_columns_follow_the_join_rules_on_random_traffic(seed, max_pending, max_ready):
    """Puts of 1-12 rows (ids with gaps), labels for pending, joined, expired, dropped, never
    served and future ids, takes of any size, time moving on: every answer, every row's
    features, label and label time, the order and the counts match the model; a row is lost
    only to a bound."""
    rng = random.Random(seed)
    cache = SampleCache(SampleCacheConfig(2.0, max_pending, max_ready), clock=lambda: 0.0)
    model = Model(2.0, max_pending, max_ready)
    now, next_id, taken = 0.0, 0, 0
    for _ in range(400):
        now += rng.choice([0.0, 0.01, 0.1, 0.7])
        op = rng.random()
        if op < 0.3:
            ids = list(range(next_id, next_id + rng.randint(1, 12)))
            next_id = ids[-1] + 1 + rng.choice([0, 0, 3])
            put_batch(cache, batch(ids, now), now=now)
            model.put(ids, now)
        elif op < 0.85:
            rid, label = rng.randint(-2, next_id + 2), float(rng.randint(0, 1))
            assert cache.feedback(rid, label, now=now) is model.feedback(rid, label, now)
        else:
            k = rng.randint(1, 50)
            expected = model.take(k, now)
            rows = cache.take(k, now=now)
            assert (rows is None) == (not expected)
            if rows is not None:
                check_rows(rows, expected)
                taken += len(expected)
        assert cache.sizes()["pending"] == len(model.pending)
        assert cache.sizes()["ready"] == len(model.ready)
    c = cache.counts
    assert c.dropped_pending + c.dropped_ready == model.lost
    assert c.taken == taken
    assert c.served == c.joined + c.expired + c.dropped_pending + len(model.pending)
    if max_pending == max_ready == 10_000:
        assert model.lost == 0  # within the bounds nothing is lost


def test_a_waiting_row_costs_about_its_data_bytes():
    """1,600 rows a second, each labelled half a second after it was served (the node memory
    bench's traffic): the arena holds the ~800 waiting rows in about 1.5x their records, not
    the ~690 bytes a row the per-row Python objects took."""
    cache = SampleCache(SampleCacheConfig(label_window_s=30.0), clock=lambda: 0.0)
    rid, most = 0, 0
    for step in range(4000):  # 5 ms steps, 8 rows each, labelled 100 steps later
        now = step * 0.005
        put_batch(cache, batch(list(range(rid, rid + 8)), now), now=now)
        rid += 8
        for old in range(max(0, rid - 808), rid - 800):
            assert cache.feedback(old, 1.0, now=now) is Feedback.JOINED
        cache.take(256, now=now)
        most = max(most, cache.nbytes())
    rows = cache._rows
    assert rows is not None
    record = rows.dtype.itemsize + 8 * 2.5  # a record and its 2.5 values
    assert cache.sizes()["pending"] == 800
    assert most <= 2.0 * 808 * record + 3 * MIN_ROWS * 8
    assert most / 800 < 200  # bytes a waiting row, all arenas


def test_the_arenas_shrink_again_when_traffic_falls():
    cache = SampleCache(SampleCacheConfig(label_window_s=1.0), clock=lambda: 0.0)
    put_batch(cache, batch(list(range(20_000)), 0.0), now=0.0)  # a burst, all waiting
    burst = cache.nbytes()
    rid = 20_000
    for step in range(200):  # then a trickle; the burst times out and is taken
        now = 2.0 + step * 0.1
        put_batch(cache, batch([rid], now), now=now)
        rid += 1
        while cache.take(512, now=now) is not None:
            pass
    assert cache.sizes()["held"] <= 11  # the rows of the last second
    assert cache.nbytes() < burst / 20


def test_a_squeeze_keeps_the_held_rows_and_their_bags():
    rows = JoinRows(n_features=1, n_dense=1)
    for rid in range(3 * MIN_ROWS):  # three arenas' worth, every other row released
        values = np.arange(rid % 3, dtype=np.int64) + 10 * rid
        pos, _ = rows.append(
            np.array([rid]), 0.0, np.zeros(1), np.zeros(1, np.float32),
            np.full((1, 1), rid, np.float32), (values,), (np.zeros(1, np.int64),),
        )  # fmt: skip
        if rid % 2:
            rows.release(np.array([pos]))
    held = rows.find(np.arange(3 * MIN_ROWS))
    assert (held[1::2] == -1).all() and (held[::2] >= 0).all()
    values, offsets = rows.gather(held[::2])
    expected = [10 * r + k for r in range(0, 3 * MIN_ROWS, 2) for k in range(r % 3)]
    assert values[0].tolist() == expected
    assert rows.dense[held[::2], 0].tolist() == list(range(0, 3 * MIN_ROWS, 2))
    assert rows.hi - rows.lo < 3 * MIN_ROWS  # the released rows were squeezed out


@pytest.mark.parametrize("needed", [0, 1, 255, 256, 1000, 10**6])
def test_room_is_half_as_much_again_in_whole_blocks(needed):
    room = room_for(needed)
    assert room >= needed + needed // 2 and room % MIN_ROWS == 0
    assert room < needed + needed // 2 + MIN_ROWS or room == MIN_ROWS


def test_the_ready_queue_is_a_fifo_that_grows_and_shrinks():
    queue = RidQueue()
    queue.push(np.arange(5))
    assert queue.pop(2).tolist() == [0, 1]
    queue.push(np.arange(5, 5000))
    assert len(queue) == 4998 and queue.nbytes >= 4998 * 8
    assert queue.pop(4990).tolist() == list(range(2, 4992))
    assert queue.pop(100).tolist() == list(range(4992, 5000))
    assert len(queue) == 0 and queue.nbytes == MIN_ROWS * 8
