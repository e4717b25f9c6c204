import math

import numpy as np
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

from dlrm_core.metrics import LatencyHistogram, WindowedMetrics, auc, log_loss


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_on_continuous_scores(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 2000)
    s = rng.normal(size=2000) + 0.7 * y
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_auc_matches_sklearn_with_heavy_ties(seed):
    rng = np.random.default_rng(100 + seed)
    y = rng.integers(0, 2, 3000)
    s = np.round(rng.random(3000) + 0.3 * y, 1)  # about 14 distinct values
    assert len(np.unique(s)) < 20
    assert auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_known_values():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1], [0.5, 0.5]) == 0.5  # a tied pair counts one half
    # pairs (pos, neg): (0.8>0.3) (0.8>0.5) (0.5=0.5 -> 1/2) (0.5>0.3) -> 3.5 / 4
    assert auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.3]) == 0.875


def test_auc_accepts_torch_and_is_float():
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    s = torch.tensor([0.2, 0.9, 0.4, 0.5], dtype=torch.float32)
    value = auc(y, s)
    assert isinstance(value, float)
    assert value == pytest.approx(roc_auc_score(y.numpy(), s.numpy()))


def test_auc_single_class_or_empty_is_nan():
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    assert math.isnan(auc([], []))


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        auc([0, 1], [0.1])
    with pytest.raises(ValueError, match="scores must be finite"):
        auc([0, 1], [0.1, float("nan")])


def test_log_loss_matches_sklearn_and_clips():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 500)
    p = rng.random(500)
    assert log_loss(y, p) == pytest.approx(sk_log_loss(y, p), rel=1e-9)
    # A confident mistake is finite: clipped to -log(eps).
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(1e-7))
    assert log_loss([0, 1], [0.0, 1.0]) == pytest.approx(-math.log(1 - 1e-7))
    assert math.isnan(log_loss([], []))
    with pytest.raises(ValueError, match="probabilities"):
        log_loss([1], [1.5])


def test_windowed_metrics_split_by_time():
    rng = np.random.default_rng(3)
    t = rng.uniform(0, 30, 3000)
    y = rng.integers(0, 2, 3000)
    p = np.clip(0.5 + 0.3 * (y - 0.5) + rng.normal(0, 0.2, 3000), 0.01, 0.99)
    wm = WindowedMetrics(width_s=10.0)
    for lo in range(0, 3000, 250):  # streamed in pieces
        wm.add(y[lo : lo + 250], p[lo : lo + 250], t[lo : lo + 250])
    results = wm.results()
    assert [r.start for r in results] == [0.0, 10.0, 20.0]
    for r in results:
        m = (t >= r.start) & (t < r.end)
        assert r.count == int(m.sum())
        assert r.positives == int(y[m].sum())
        assert r.auc == pytest.approx(roc_auc_score(y[m], p[m]), abs=1e-12)
        assert r.log_loss == pytest.approx(sk_log_loss(y[m], p[m], labels=[0, 1]), rel=1e-9)


def test_windowed_metrics_single_class_window_is_nan_and_eviction_keeps_results():
    wm = WindowedMetrics(width_s=1.0, max_windows=2)
    wm.add([1, 1], [0.9, 0.8], [0.1, 0.2])  # window 0: only positives
    wm.add([0, 1], [0.1, 0.8], [1.5, 1.6])
    wm.add([0, 1], [0.9, 0.8], [2.5, 2.6])  # evicts window 0 into frozen results
    results = wm.results()
    assert [r.count for r in results] == [2, 2, 2]
    assert math.isnan(results[0].auc)
    assert results[1].auc == 1.0 and results[2].auc == 0.0
    with pytest.raises(ValueError, match="evicted"):
        wm.add([1], [0.5], [0.5])


def test_windowed_metrics_validation():
    with pytest.raises(ValueError, match="width_s"):
        WindowedMetrics(width_s=0)
    wm = WindowedMetrics(width_s=1.0)
    with pytest.raises(ValueError, match="timestamps"):
        wm.add([1, 0], [0.5, 0.5], [0.0])


def test_latency_percentiles_within_stated_relative_error():
    rng = np.random.default_rng(11)
    ms = rng.lognormal(mean=1.0, sigma=1.0, size=50_000)
    h = LatencyHistogram()
    h.record(ms)
    assert h.count == 50_000
    for q in (50, 95, 99):
        exact = float(np.percentile(ms, q, method="inverted_cdf"))  # nearest rank
        assert h.percentile(q) == pytest.approx(exact, rel=h.relative_error + 1e-12)
    assert h.summary()["max_ms"] == pytest.approx(ms.max())
    assert h.mean_ms == pytest.approx(ms.mean())


def test_latency_merge_equals_recording_everything():
    rng = np.random.default_rng(12)
    a, b = rng.exponential(5.0, 1000), rng.exponential(50.0, 300)
    ha, hb, hall = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    ha.record(a)
    hb.record(b)
    hall.record(np.concatenate([a, b]))
    ha.merge(hb)
    assert ha.count == hall.count == 1300
    for q in (50, 95, 99, 100):
        assert ha.percentile(q) == hall.percentile(q)
    with pytest.raises(ValueError, match="same"):
        ha.merge(LatencyHistogram(growth=1.1))


def test_latency_bounded_memory_and_edges():
    h = LatencyHistogram(min_ms=0.01, max_ms=1000.0)
    buckets = h._counts.shape[0]
    for _ in range(20):
        h.record(np.full(10_000, 3.0))
    assert h._counts.shape[0] == buckets  # memory does not grow with samples
    assert h.percentile(50) == pytest.approx(3.0, rel=h.relative_error)
    h.record(5000.0)  # above max_ms: reported as max_ms
    assert h.percentile(100) == 1000.0
    h2 = LatencyHistogram(min_ms=0.01)
    h2.record(0.0)
    assert h2.percentile(50) == 0.01
    assert math.isnan(LatencyHistogram().percentile(99))
    with pytest.raises(ValueError, match=">= 0"):
        h.record(-1.0)
    with pytest.raises(ValueError, match="q must be"):
        h.percentile(0)
