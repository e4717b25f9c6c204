import tracemalloc

import numpy as np
import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.metrics import auc
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream, hashed_normal


def stream(**kw) -> SyntheticStream:
    base = {"num_events": 40_000, "batch_size": 2000, "user_rows": 5000, "item_rows": 5000}
    return SyntheticStream(SyntheticConfig(**{**base, **kw}))


def all_events(s: SyntheticStream) -> SparseBatch:
    return SparseBatch.concat(list(s))


def test_deterministic_by_seed_and_random_access():
    a, b, c = stream(seed=3), stream(seed=3), stream(seed=4)
    batches_a = list(a)
    assert len(batches_a) == len(a) == 20
    for k in (0, 7, 19):
        x, y = batches_a[k], b.batch(k)
        assert all(torch.equal(p, q) for p, q in zip(x.values, y.values, strict=True))
        assert torch.equal(x.labels, y.labels) and torch.equal(x.dense, y.dense)
    assert not torch.equal(batches_a[0].values[0], c.batch(0).values[0])
    with pytest.raises(IndexError):
        a.batch(20)


def test_schema_timestamps_and_ranges():
    s = stream(context_rows=(30,), n_dense=2, events_per_second=50.0, num_events=4500)
    assert s.schema.keys == ("user_id", "item_id", "ctx_0")
    assert s.schema.table_sizes == (5000, 5000, 30) and s.schema.dense == ("d0", "d1")
    batch = all_events(s)
    assert len(batch) == 4500 and len(list(s)[-1]) == 500  # last batch is partial
    assert torch.equal(batch.timestamps, torch.arange(4500, dtype=torch.float64) / 50.0)
    assert torch.equal(batch.request_ids, torch.arange(4500))
    for values, rows in zip(batch.values, s.schema.table_sizes, strict=True):
        assert int(values.min()) >= 1 and int(values.max()) < rows  # row 0 = missing, unused
    ctr = batch.labels.mean().item()
    assert 0.15 < ctr < 0.5


def test_zipf_skew():
    s = stream(num_events=100_000, fresh_event_share=0.0, new_id_share=0.0, zipf_exponent=1.05)
    counts = np.sort(np.bincount(all_events(s).feature("item_id")[0].numpy()))[::-1]
    # Zipf: the r-th most popular id gets ~ r^-s of the top one's traffic.
    assert counts[0] / counts[9] == pytest.approx(10**1.05, rel=0.3)
    assert counts[0] / counts[99] == pytest.approx(100**1.05, rel=0.4)
    assert counts[:50].sum() > 0.4 * counts.sum()  # 1% of ids carry a large share


def test_new_ids_appear_later_and_get_traffic():
    s = stream(new_id_share=0.3, fresh_event_share=0.1)
    items = all_events(s).feature("item_id")[0].numpy()
    space = s.items
    early = 2000  # first 5% of the 40,000 events
    assert space.born(np.array([0]))[0] == space.initial < space.born(np.array([39_999]))[0]
    unborn = set(space.rows_of(np.arange(space.born(np.array([early]))[0], space.size)).tolist())
    assert len(unborn) > 1000
    assert not unborn & set(items[:early].tolist())  # nobody meets an id before its birth
    late_share = np.isin(items[30_000:], list(unborn)).mean()
    assert late_share > 0.08  # born ids get traffic (fresh_event_share plus Zipf draws)
    fixed = stream(new_id_share=0.0)
    assert fixed.items.born(np.array([39_999]))[0] == fixed.items.size


def test_oracle_is_learnable_and_drift_changes_the_label_function():
    s = stream(num_events=60_000, drift_per_hour=12.0, events_per_second=100.0)
    batch = all_events(s)  # 600 s of events: tastes turn by 12/3600*600 = 2 rad
    late = batch.select(torch.arange(50_000, 60_000))
    fresh = auc(late.labels, s.true_logit(late))
    stale = auc(late.labels, s.true_logit(late, at_time=0.0))
    assert fresh > 0.8
    assert fresh - stale > 0.1  # the label function of t=0 is much worse later
    still = stream(num_events=60_000, drift_per_hour=0.0)
    late = all_events(still).select(torch.arange(50_000, 60_000))
    assert torch.equal(still.true_logit(late), still.true_logit(late, at_time=0.0))


def fit_mf(batch: SparseBatch, rows: int, dim: int = 8, epochs: int = 8) -> torch.nn.Module:
    """A small logistic matrix factorisation: sigmoid(b + b_u + b_i + <e_u, e_i>)."""
    torch.manual_seed(0)
    users, items = batch.values[0], batch.values[1]

    class MF(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.u = torch.nn.Embedding(rows, dim + 1)
            self.i = torch.nn.Embedding(rows, dim + 1)
            self.b = torch.nn.Parameter(torch.zeros(1))
            torch.nn.init.normal_(self.u.weight, std=0.1)
            torch.nn.init.normal_(self.i.weight, std=0.1)

        def forward(self, u, i):
            eu, ei = self.u(u), self.i(i)
            return self.b + eu[:, -1] + ei[:, -1] + (eu[:, :-1] * ei[:, :-1]).sum(1)

    model = MF()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(epochs):
        for lo in range(0, len(batch), 1000):
            sl = slice(lo, lo + 1000)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(users[sl], items[sl]), batch.labels[sl]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def test_a_model_fitted_early_learns_and_then_loses_auc_under_drift():
    common = {"user_rows": 60, "item_rows": 60, "num_events": 60_000, "new_id_share": 0.0}
    common |= {"context_rows": (), "n_dense": 0, "events_per_second": 100.0}
    result = {}
    for drift in (0.0, 12.0):  # 12 rad/hour: ~0.25 rad within the training window
        s = stream(drift_per_hour=drift, **common)
        batch = all_events(s)
        model = fit_mf(batch.select(torch.arange(0, 15_000)), rows=60)
        with torch.no_grad():
            score = {
                name: auc(part.labels, model(part.values[0], part.values[1]))
                for name, part in (
                    ("next", batch.select(torch.arange(15_000, 20_000))),
                    ("late", batch.select(torch.arange(55_000, 60_000))),
                )
            }
        result[drift] = score
    assert result[0.0]["next"] > 0.8  # it learns
    assert abs(result[0.0]["late"] - result[0.0]["next"]) < 0.03  # no drift: stays
    assert result[12.0]["next"] > 0.75
    assert result[12.0]["next"] - result[12.0]["late"] > 0.2  # drift: the stale model decays


def test_memory_is_bounded_for_ten_million_row_tables():
    peaks = []
    for rows in (10_000, 10_000_000):
        cfg = SyntheticConfig(
            user_rows=rows, item_rows=rows, context_rows=(rows,), num_events=3_000_000,
            batch_size=4096,
        )  # fmt: skip
        tracemalloc.start()
        s = SyntheticStream(cfg)
        for k in (0, 1, 700):
            s.batch(k)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 20 * 2**20  # a few MB for 4096-event batches, whatever the table size
    assert peaks[1] < 1.5 * peaks[0]


def test_hashed_normal_is_standard_normal_and_per_id():
    ids = np.arange(1, 50_001)
    z = hashed_normal(7, 1, ids, 4)
    assert z.shape == (50_000, 4)
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02
    assert abs(np.corrcoef(z[:, 0], z[:, 1])[0, 1]) < 0.02
    assert np.array_equal(hashed_normal(7, 1, ids[[10, 3]], 4), z[[10, 3]])
    assert not np.allclose(hashed_normal(8, 1, ids[:5], 4), z[:5])


def test_config_bounds():
    with pytest.raises(ValueError, match="user_rows"):
        SyntheticConfig(user_rows=1)
    with pytest.raises(ValueError, match="new_id_share"):
        SyntheticConfig(new_id_share=1.0)
