"""RankLog: rank changes counted from a trainer's RankEvents, per window and in any hour."""

from __future__ import annotations

from dlrm_core.experiment.rank_log import RankLog
from dlrm_core.rank_policy import RankEvent


def rank(t: float, table: str, a: int, b: int, why: str = "energy") -> RankEvent:
    return RankEvent(t, table, "rank", a, b, why)


def test_changes_per_window_the_most_in_an_hour_and_growth_after_the_region_filled() -> None:
    log = RankLog(["big", "small"])
    log.note([rank(100.0, "big", 4, 10, "warm:gram"), rank(1000.0, "big", 10, 8)])
    log.note([
        RankEvent(1500.0, "big", "prune", 900, 890, "age"),  # idle rows: not a full region
        rank(2000.0, "big", 8, 8, "refused:budget"),  # a refusal is no change
        RankEvent(3000.0, "big", "prune", 1000, 980, "lru"),  # no room: the region is full
        rank(3500.0, "big", 8, 12, "grow:energy"),
        RankEvent(3600.0, "big", "prune", 980, 970, "lru"),
        rank(4000.0, "big", 12, 16, "grow:energy"),
        rank(7300.0, "big", 16, 9, "shrink:energy"),
    ])  # fmt: skip
    got = log.summary(start_s=0.0, window_s=3600.0, windows=3)
    big = got["big"]
    assert big["changes_per_window"] == [3, 1, 1]
    assert big["max_changes_in_an_hour"] == 3  # 100, 1000, 3500 (4000 is an hour after 100)
    assert big["full_after_s"] == 3000.0 and big["growths_after_full"] == 2
    assert big["refused_growths"] == 1
    assert [(c["from"], c["to"]) for c in big["changes"]] == [(4, 10), (10, 8), (8, 12),
                                                             (12, 16), (16, 9)]  # fmt: skip
    small = got["small"]
    assert small["changes_per_window"] == [0, 0, 0] and small["full_after_s"] is None
    assert small["max_changes_in_an_hour"] == 0 and small["growths_after_full"] == 0
