"""The rows a delta sync or delta rebase ships: changed since last taken, by at least min_steps
cluster steps; the others wait with their count."""

from __future__ import annotations

import pytest
import torch

from dlrm_core.experiment.cluster import ChangedRows
from dlrm_core.model import DLRMConfig
from dlrm_core.trainer import FullStepResult


def step(ids: list[int]) -> FullStepResult:
    t = torch.tensor(ids, dtype=torch.int64)
    return FullStepResult(0.0, False, {"user": (t, torch.ones(len(ids)))})


def config() -> DLRMConfig:
    return DLRMConfig(("user",), (10,), 1, 4, (4,), (1,))


def test_every_changed_row_once_by_default() -> None:
    rows = ChangedRows(config())
    rows.mark(step([1, 4]))
    rows.mark(step([4, 7]))
    assert rows.take()["user"].tolist() == [1, 4, 7]
    assert rows.take()["user"].tolist() == []


def test_rows_changed_by_fewer_steps_wait_with_their_count() -> None:
    rows = ChangedRows(config(), min_steps=2)
    rows.mark(step([1, 4]))
    rows.mark(step([4, 7]))
    assert rows.take()["user"].tolist() == [4]  # 1 and 7 were changed once
    rows.mark(step([7]))
    assert rows.take()["user"].tolist() == [7]  # its second change since it was last shipped
    for _ in range(300):  # the count saturates, never wraps
        rows.mark(step([2]))
    assert rows.take()["user"].tolist() == [2]


def test_min_steps_is_bounded() -> None:
    with pytest.raises(ValueError, match="min_steps"):
        ChangedRows(config(), min_steps=0)


def test_rows_of_a_failed_send_ride_with_the_next_take() -> None:
    rows = ChangedRows(config(), min_steps=2)
    rows.mark(step([1, 2]))
    rows.mark(step([1]))
    taken = rows.take()
    assert taken["user"].tolist() == [1]
    rows.put_back(taken)  # the send failed
    assert rows.take()["user"].tolist() == [1]
