"""bench/node_replay.py: its verdict on hourly samples, and the stream's ids per replayed hour."""

import argparse

from bench import node_replay

MIB = 2**20


def hour(h: int, total_mib: float, measured_pct: float, account_pct: float = 1.0) -> dict:
    return {
        "hour": h,
        "node_total_bytes": total_mib * MIB,
        "lora_measured_bytes": (total_mib - 300) * MIB,
        "proportional_measured_pct_of_tables": measured_pct,
        "proportional_accounted_pct_of_tables": account_pct,
        "shed": 0,
        "served": 1000 * h,
        "trained_samples": 7000 * h,
        "to_trainer": 6000 * h,
        "dropped_before_training": 10 * h,
        "code_pages_pss_bytes": 180 * MIB,
        "code_pages_rss_bytes": 400 * MIB,
    }


def test_a_node_that_grows_past_the_tolerance_is_not_flat():
    rows = [hour(h, 500 + 1.5 * h, 1.5) for h in range(1, 25)]  # +34.5 MiB: +6.9%
    result = node_replay.verdict(rows, budget_pct=2.0, rows_per_request=8)
    assert not result["flat"]
    assert result["total_growth_last_vs_hour1"] == round(34.5 / 501.5, 4)
    assert result["total_slope_mib_per_hour"] == 1.5
    assert result["lora_growth_mib"] == 34.5
    assert (result["events_served"], result["to_trainer"]) == (192_000, 144_000)


def test_a_flat_node_within_its_budget_passes_and_one_sample_over_fails():
    rows = [hour(h, 500 + (h % 2), 1.9) for h in range(1, 25)]
    result = node_replay.verdict(rows, budget_pct=2.0, rows_per_request=8)
    assert result["flat"] and result["measured_within_budget"] and result["account_within_budget"]
    rows[11] = hour(12, 500, 2.01, account_pct=2.2)
    result = node_replay.verdict(rows, budget_pct=2.0, rows_per_request=8)
    assert not result["measured_within_budget"] and not result["account_within_budget"]
    assert result["max_proportional_measured_pct"] == 2.01


def test_the_streams_ids_per_hour_count_distinct_and_first_seen_ids():
    args = argparse.Namespace(hours=3, qps=0.5, rows=8, seed=0, rows_per_table=5_000)
    drift = node_replay.id_drift(args)
    assert [d["hour"] for d in drift] == [1, 2, 3]
    first = drift[0]
    assert first["user_new"] == first["user_distinct"] > 0  # nothing was seen before hour 1
    for d in drift[1:]:
        assert 0 < d["user_new"] < d["user_distinct"] <= 14_400  # 1,800 requests x 8 rows
        assert 0 < d["item_new"] < d["item_distinct"]


def test_file_pages_shared_anew_move_their_share_not_their_resident_bytes():
    """The twin's torch unmapped: the same resident code pages, a bigger share of them."""

    def process(pss_file: int, rss_file: int) -> dict:
        return {"Pss_File": pss_file * MIB, "RssFile": rss_file * MIB}

    with_ = {"trainer": process(14, 60), "inference": process(12, 50)}
    without = {"inference": process(10, 48)}
    first = node_replay.code_pages(with_, without)
    assert first == {"code_pages_pss_bytes": 16 * MIB, "code_pages_rss_bytes": 62 * MIB}
    with_ = {"trainer": process(30, 60), "inference": process(25, 50)}
    rows = [hour(1, 500, 1.5) | first, hour(2, 530, 1.5) | node_replay.code_pages(with_, without)]
    result = node_replay.verdict(rows, budget_pct=2.0, rows_per_request=8)
    assert (result["code_pages_pss_growth_mib"], result["code_pages_rss_growth_mib"]) == (29, 0)
