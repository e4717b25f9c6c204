"""The LRU pick in C (lru.py, the admission kernel's lru) against the torch ops it replaced:
the same rows in the same order where ages differ, ties the higher row first, and the empty
cases."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.lru import least_recent


def _live(ids: torch.Tensor, last_used: torch.Tensor, origin: float = 100.0) -> LiveEmbedding:
    live = LiveEmbedding(nn.EmbeddingBag(1000, 8, mode="sum"), LiveEmbeddingConfig(rank=2))
    live.activate(ids, origin, max_active=ids.numel())
    live.last_used.copy_(last_used)  # in row order: the rows' ids are live.ids
    return live


def _torch_lru(
    live: LiveEmbedding, count: int, protect: torch.Tensor | None, now: float, min_age: float
) -> torch.Tensor:
    """RankController._lru before the kernel (torch.topk)."""
    ages = live.ages(now)
    ages[ages < min_age] = -math.inf
    if protect is not None:
        pos, hit = live.slots(protect)
        ages[pos[hit]] = -math.inf
    oldest = torch.topk(ages, min(count, ages.numel())).indices
    return live.ids[oldest[torch.isfinite(ages[oldest])]]


def _stable_lru(
    live: LiveEmbedding, count: int, protect: torch.Tensor | None, now: float, min_age: float
) -> torch.Tensor:
    """The defined order: oldest first, of equal ages the higher row (a stable descending sort
    of the rows reversed)."""
    ages = live.ages(now)
    keep = ages >= min_age
    if protect is not None:
        pos, hit = live.slots(protect)
        keep[pos[hit]] = False
    order = ages.numel() - 1 - torch.sort(ages.flip(0), descending=True, stable=True).indices
    return live.ids[order[keep[order]][:count]]


@pytest.mark.parametrize("seed", range(12))
def test_distinct_ages_pick_what_topk_picked(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 400, (1,), generator=gen))
    ids = torch.randperm(1000, generator=gen)[:n]
    used = torch.randperm(100_000, generator=gen)[:n].float() / 1000  # distinct stamps
    live = _live(ids, used)
    now = 100.0 + float(torch.rand(1, generator=gen)) * 120
    size = int(torch.randint(0, 600, (1,), generator=gen))
    protect = torch.randint(0, 1000, (size,), generator=gen)
    for count in (0, 1, n // 7 + 1, n, n + 5):
        for min_age in (0.0, 30.0, 1e9):
            for prot in (None, protect):
                got = least_recent(live, count, prot, now, min_age)
                want = _torch_lru(live, count, prot, now, min_age)
                assert torch.equal(live.ids[got], want)


@pytest.mark.parametrize("seed", range(8))
def test_equal_ages_go_the_higher_row_first(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 300
    ids = torch.randperm(1000, generator=gen)[:n]
    used = torch.randint(0, 5, (n,), generator=gen).float()  # a handful of batch stamps
    live = _live(ids, used)
    protect = ids[torch.randint(0, n, (40,), generator=gen)]  # repeats: a row protected twice
    for count in (1, 7, 60, 150, 299, 300, 1000):
        for prot in (None, protect):
            got = least_recent(live, count, prot, 110.0, 6.5)
            assert torch.equal(live.ids[got], _stable_lru(live, count, prot, 110.0, 6.5))
            pairs = list(zip(live.ages(110.0)[got].tolist(), got.tolist(), strict=True))
            assert all(
                a > b or (a == b and r > s)
                for (a, r), (b, s) in zip(pairs, pairs[1:], strict=False)
            )


def test_empty_cases() -> None:
    empty = LiveEmbedding(nn.EmbeddingBag(10, 4, mode="sum"), LiveEmbeddingConfig(rank=2))
    assert least_recent(empty, 5, None, 1.0, 0.0).numel() == 0
    assert least_recent(empty, 5, torch.tensor([1, 2]), 1.0, 0.0).numel() == 0
    live = _live(torch.tensor([3, 5, 9]), torch.tensor([0.0, 1.0, 2.0]))
    assert least_recent(live, 0, None, 110.0, 0.0).numel() == 0
    assert least_recent(live, 3, torch.tensor([3, 5, 9, 9]), 110.0, 0.0).numel() == 0  # all kept
    assert least_recent(live, 3, None, 110.0, 1e6).numel() == 0  # all too fresh
    # ids that are not active, out of any table's range or negative protect nothing
    got = least_recent(live, 3, torch.tensor([-1, 4, 2**40]), 110.0, 0.0)
    assert live.ids[got].tolist() == [3, 5, 9]
    no_ids = torch.tensor([], dtype=torch.int64)
    assert live.ids[least_recent(live, 2, no_ids, 110.0, 0.0)].tolist() == [3, 5]
    assert least_recent(live, 2, torch.tensor([5], dtype=torch.int32), 110.0, 0.0).tolist() == [
        0,
        2,
    ]
