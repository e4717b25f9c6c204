import math
import sys

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.label_join import LabelJoin


def batch(request_ids, labels, t=0.0):
    n = len(request_ids)
    return SparseBatch.from_ids(
        ["u"],
        [[[i] for i in range(n)]],
        dense=torch.zeros(n, 1),
        labels=torch.tensor(labels, dtype=torch.float32),
        timestamps=torch.full((n,), t),
        request_ids=torch.tensor(request_ids),
    )


def test_logged_labels_join_after_the_delay():
    join = LabelJoin(delay=10.0, timeout=60.0, max_pending=100)
    join.add_served(batch([1, 2], [1.0, 0.0]), now=0.0)
    assert join.pop_ready(9.9) == []
    (ready,) = join.pop_ready(10.0)
    assert ready.request_ids.tolist() == [1, 2] and ready.labels.tolist() == [1.0, 0.0]
    assert join.pending_rows == 0 and join.counts.joined == 2
    assert join.pop_ready(100.0) == []


def test_a_logged_batch_pops_as_served_float64_labels_as_float32():
    """A batch served with every label logged needs no relabelled copy; other label dtypes
    come out float32 as the batch contract says."""
    join = LabelJoin(delay=0.0, timeout=60.0, max_pending=100)
    served = batch([1, 2], [1.0, 0.0])
    join.add_served(served, now=0.0)
    (ready,) = join.pop_ready(0.0)
    assert ready is served
    wide = served.with_labels(served.labels)
    object.__setattr__(wide, "labels", served.labels.double())
    join.add_served(wide, now=1.0)
    (ready,) = join.pop_ready(1.0)
    assert ready is not wide and ready.labels.dtype == torch.float32
    assert ready.labels.tolist() == [1.0, 0.0]


def test_feedback_joins_missing_labels_and_the_rest_time_out_as_negatives():
    join = LabelJoin(delay=5.0, timeout=30.0, max_pending=100)
    nan = math.nan
    join.add_served(batch([10, 11, 12], [nan, nan, nan]), now=0.0)
    assert join.add_feedback(torch.tensor([11, 99]), torch.tensor([1.0, 1.0]), now=2.0) == 1
    assert join.counts.unknown_feedback == 1
    (early,) = join.pop_ready(5.0)  # ready at max(2, 0 + 5)
    assert early.request_ids.tolist() == [11] and early.labels.tolist() == [1.0]
    assert join.pop_ready(29.0) == []
    (late,) = join.pop_ready(30.0)
    assert late.request_ids.tolist() == [10, 12] and late.labels.tolist() == [0.0, 0.0]
    assert (join.counts.joined, join.counts.timed_out) == (1, 2)
    # feedback after the row left the buffer is counted, not applied
    assert join.add_feedback(torch.tensor([10]), torch.tensor([1.0]), now=31.0) == 0
    assert join.counts.unknown_feedback == 2


def test_buffer_is_bounded_and_drops_are_counted():
    join = LabelJoin(delay=1.0, timeout=10.0, max_pending=4)
    join.add_served(batch([1, 2, 3], [1.0, 1.0, 1.0]), now=0.0)
    join.add_served(batch([4, 5], [0.0, 0.0]), now=0.5)
    assert join.counts.dropped == 3 and join.pending_rows == 2
    (ready,) = join.pop_ready(2.0)
    assert ready.request_ids.tolist() == [4, 5]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="delay < timeout"):
        LabelJoin(delay=10.0, timeout=5.0, max_pending=10)
    with pytest.raises(ValueError, match="max_pending"):
        LabelJoin(delay=0.0, timeout=5.0, max_pending=0)


def test_a_logged_label_is_final_and_only_unlabelled_rows_take_feedback():
    join = LabelJoin(delay=5.0, timeout=30.0, max_pending=100)
    join.add_served(batch([1, 2, 3], [1.0, math.nan, 0.0]), now=0.0)
    assert join.add_feedback(torch.tensor([1, 2, 3]), torch.tensor([0.0, 1.0, 1.0]), 1.0) == 1
    assert join.counts.unknown_feedback == 2  # 1 and 3 came logged
    (ready,) = join.pop_ready(5.0)
    assert ready.request_ids.tolist() == [1, 2, 3] and ready.labels.tolist() == [1.0, 1.0, 0.0]


def test_relabelling_checks_the_labels_shape():
    served = batch([1, 2], [1.0, 0.0])
    relabelled = served.with_labels(torch.tensor([0, 1]))
    assert relabelled.labels.dtype == torch.float32 and relabelled.labels.tolist() == [0.0, 1.0]
    assert relabelled.values == served.values and served.labels.tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="labels must be"):
        served.with_labels(torch.zeros(3))


def test_logged_batches_are_emitted_whole_beside_ones_waiting_for_feedback():
    """A batch served with every label keeps no per-row state (its bytes are the batch's) and
    leaves whole at served + delay; one waiting for feedback joins row by row; an empty batch
    leaves nothing behind."""
    join = LabelJoin(delay=5.0, timeout=30.0, max_pending=100)
    logged = batch([1, 2], [1.0, 0.0])
    join.add_served(logged, now=0.0)
    maps = sys.getsizeof(join._where) + sys.getsizeof(join._entries)
    assert join.nbytes() - maps == logged.nbytes + sys.getsizeof({})  # its labels: the batch's
    join.add_served(batch([3, 4], [math.nan, 0.0]), now=1.0)
    join.add_served(batch([], []), now=1.0)
    assert join.add_feedback(torch.tensor([1, 3]), torch.tensor([1.0, 1.0]), now=2.0) == 1
    assert join.counts.unknown_feedback == 1  # request 1 came logged
    (first,) = join.pop_ready(5.0)
    assert first.request_ids.tolist() == [1, 2] and first.labels.tolist() == [1.0, 0.0]
    (second,) = join.pop_ready(6.0)
    assert second.request_ids.tolist() == [3, 4] and second.labels.tolist() == [1.0, 0.0]
    assert join.pending_rows == 0 and join.counts.joined == 4 and join.counts.served == 4
    assert join.pop_ready(100.0) == [] and not join._entries  # the empty batch is gone too
