"""RuntimeMetrics' freshness lag: a trainer's install lags, else the age of a sync's labels."""

from __future__ import annotations

import numpy as np

from nodeworker.feed import FeedReport
from nodeworker.runtime_metrics import RuntimeMetrics
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


def _stats(samples: int, fresh: list[tuple[int, list[float]]]) -> TrainerStats:
    feed = FeedReport({}, {}, 0, 0, np.zeros(0), np.zeros(0))
    return TrainerStats(1, samples, 0, 3, {}, {}, (), tuple(fresh), feed, 0.0)
