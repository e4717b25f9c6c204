import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dlrm_core.checkpoint import CheckpointError, save_model
from dlrm_core.kernel import admission_kernel
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig, attach_live_embeddings
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.row_budget import overhead_bytes
from dlrm_core.table_factors import TableFactors, export_factors, import_factors

# Tiny tensors: one torch thread avoids OpenMP stalls on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


N, D, R = 50, 6, 3


def make_live(seed: int = 0, n: int = N, rank: int = R) -> LiveEmbedding:
    torch.manual_seed(seed)
    base = nn.EmbeddingBag(n, D, mode="sum", sparse=True)
    return LiveEmbedding(base, LiveEmbeddingConfig(rank=rank, scale=0.5, seed=seed))


def trained_live() -> LiveEmbedding:
    """Active rows 3, 7, 8, 20, 41 with random A and B."""
    live = make_live()
    live.activate(torch.tensor([41, 7, 3, 20, 8, 7]), now=100.0, max_active=10)
    g = torch.Generator().manual_seed(5)
    live.set_factors(torch.randn(5, R, generator=g), torch.randn(R, D, generator=g))
    return live


def bags():
    # bag 0: active 3 + inactive 4; bag 1: empty; bag 2: 7, 7 (repeat), 41; bag 3: inactive 49
    values = torch.tensor([3, 4, 7, 7, 41, 49])
    offsets = torch.tensor([0, 2, 2, 5])
    return values, offsets


def dense_reference(live: LiveEmbedding, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The N x D served table built explicitly: base + P A B scale."""
    delta = torch.zeros(N, D).index_add(0, live.ids, (a @ b) * live.scale)
    return live.base.weight.detach() + delta


def test_forward_and_grads_match_explicit_dense_delta():
    live = trained_live()
    values, offsets = bags()
    upstream = torch.randn(4, D, generator=torch.Generator().manual_seed(9))

    out = live(values, offsets)
    (out * upstream).sum().backward()

    a = live.A.detach().clone().requires_grad_(True)
    b = live.B.detach().clone().requires_grad_(True)
    ref = F.embedding_bag(values, dense_reference(live, a, b), offsets, mode="sum")
    (ref * upstream).sum().backward()

    torch.testing.assert_close(out, ref)
    assert live.A.grad is not None and live.A.grad.is_sparse
    torch.testing.assert_close(live.A.grad.to_dense(), a.grad)
    torch.testing.assert_close(live.B.grad, b.grad)
    # rows never looked up get no gradient
    assert a.grad[live.ids.tolist().index(20)].abs().sum() == 0
    assert live.base.weight.grad is None


def test_inactive_rows_serve_the_base_and_delta_weight_is_zero_there():
    live = trained_live()
    rows = torch.tensor([4, 7, 49])
    delta = live.get_delta_weight(rows)
    assert delta[0].abs().sum() == 0 and delta[2].abs().sum() == 0
    torch.testing.assert_close(
        delta[1], live.A.detach()[live.ids.tolist().index(7)] @ live.B.detach() * 0.5
    )
    out = live(torch.tensor([4]), torch.tensor([0]))
    torch.testing.assert_close(out[0], live.base.weight[4])


def test_activation_respects_capacity_and_appends_rows():
    live = make_live()
    assert live.activate(torch.tensor([9, 2, 30, 2, 30, 30]), now=5.0, max_active=2) == (2, 1)
    assert live.ids.tolist() == [2, 30]  # the most frequent first
    assert live.activate(torch.tensor([1, 2, 9]), now=6.0, max_active=4) == (2, 0)
    assert live.ids.tolist() == [2, 30, 1, 9]  # new rows after the active ones
    assert live.A.shape == (4, R) and live.A.abs().sum() == 0  # new rows start at delta 0
    assert live.ages(8.0).tolist() == [2.0, 3.0, 2.0, 2.0]
    assert live.slots(torch.tensor([9, 30, 4]))[0][:2].tolist() == [3, 1]
    assert live.slots(torch.tensor([9, 30, 4]))[1].tolist() == [True, True, False]
    assert live.activate(torch.tensor([5, 6]), now=9.0, max_active=6, gate=lambda i, c: i > 5) == (
        1,
        0,
    )
    assert live.ids.tolist() == [2, 30, 1, 9, 6]
    with pytest.raises(IndexError, match=r"ids must be in \[0, 50\)"):
        live.activate(torch.tensor([50]), now=7.0, max_active=10)


def test_evict_folds_delta_into_base_or_discards_it():
    live = trained_live()
    values, offsets = bags()
    before = live(values, offsets).detach()
    assert live.evict(torch.tensor([7, 41, 12]), fold=True) == 2
    assert live.ids.tolist() == [3, 20, 8]  # 20 (the last row that stays) moved into 7's hole
    assert live.slots(torch.tensor([3, 20, 8, 7, 41]))[1].tolist() == [True] * 3 + [False] * 2
    torch.testing.assert_close(live(values, offsets).detach(), before)
    assert live.take_folded().tolist() == [7, 41]

    base_3 = live.base.weight[3].clone()
    assert live.evict(torch.tensor([3]), fold=False) == 1
    torch.testing.assert_close(live(torch.tensor([3]), torch.tensor([0]))[0], base_3)


def test_rowwise_adagrad_touches_only_rows_in_the_batch():
    live = trained_live()
    a_before = live.A.detach().clone()
    live(torch.tensor([3, 41]), torch.tensor([0, 1])).sum().backward()
    live.step(lr_a=0.1, lr_b=0.01)
    changed = (live.A.detach() != a_before).any(1)
    assert changed.tolist() == [True, False, False, False, True]  # ids 3, 7, 8, 20, 41
    assert live.a_accum[0] > 0 and live.a_accum[1] == 0
    assert live.A.grad is None and live.B.grad is None


def test_memory_grows_with_active_rows_not_with_table_size():
    small, big = make_live(n=100), make_live(n=100_000)
    for live in (small, big):
        live.activate(torch.arange(0, 40, 2), now=0.0, max_active=1000)
    assert small.memory().overhead_bytes == big.memory().overhead_bytes
    report = big.memory()
    # 20 ids in 4 buckets of 8 (int32 id, int32 row) slots, the index's two int32 multipliers
    assert report.overhead_bytes == overhead_bytes(20, R, D) + 4 * 8 * 8 + 2 * 4
    assert report.a_bytes == 20 * R * 4 and report.b_bytes == R * D * 4
    assert report.slot_map_bytes == 20 * (8 + 4) + 4 * 8 * 8 + 2 * 4
    assert report.optimizer_bytes == 20 * 4 + 2 * R * D * 4
    assert report.base_bytes == 100_000 * D * 4
    assert report.overhead_pct == pytest.approx(100 * report.overhead_bytes / (100_000 * D * 4))


def test_factors_export_import_round_trip(tmp_path):
    live = trained_live()
    path = tmp_path / "t.factors"
    assert len(export_factors(live, path, table="user")) == 64
    other = make_live(seed=1)
    import_factors(other, path, table="user")
    values, offsets = bags()
    other.base.weight.data.copy_(live.base.weight.data)
    torch.testing.assert_close(other(values, offsets), live(values, offsets))
    assert torch.equal(other.last_used, live.last_used)


def test_corrupt_or_mismatched_factor_files_are_refused(tmp_path):
    live = trained_live()
    path = tmp_path / "t.factors"
    export_factors(live, path, table="user")
    with pytest.raises(CheckpointError, match="table is 'user', expected 'item'"):
        import_factors(make_live(), path, table="item")
    with pytest.raises(CheckpointError, match="num_rows is 50, expected 60"):
        import_factors(make_live(n=60), path, table="user")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        import_factors(make_live(), path, table="user")
    model_file = tmp_path / "m.ckpt"
    save_model(model_file, DLRM(DLRMConfig(("a",), (5,), 1, 2, (2,), (1,))))
    with pytest.raises(CheckpointError, match="holds a 'dlrm-model', expected 'live-factors'"):
        import_factors(make_live(), model_file, table="user")


def test_load_factors_validates_and_copies():
    live = trained_live()
    snap = live.factors()
    other = make_live()
    other.load_factors(snap)
    with torch.no_grad():
        other.A.add_(1.0)
    assert not torch.equal(other.A.detach(), snap.a)  # the published copy is untouched
    bad = TableFactors(torch.tensor([5, 3]), torch.zeros(2, R), torch.zeros(R, D), 1.0)
    with pytest.raises(ValueError, match="sorted, unique"):
        other.load_factors(bad)


def test_attach_to_a_dlrm_serves_the_base_until_trained():
    torch.manual_seed(0)
    model = DLRM(DLRMConfig(("u", "i"), (30, 20), 2, 4, (4,), (3, 1)))
    from dlrm_core.batch import SparseBatch

    batch = SparseBatch.from_ids(
        ["u", "i"], [[[1], [2]], [[3], [4]]], torch.ones(2, 2), torch.ones(2)
    )
    before = model(batch).detach()
    live = attach_live_embeddings(model.sparse_arch, ["u"], LiveEmbeddingConfig(rank=2))
    live["u"].activate(batch.values[0], now=0.0, max_active=10)
    torch.testing.assert_close(model(batch).detach(), before)
    with pytest.raises(CheckpointError, match="merge or unwrap"):
        save_model("/nonexistent", model)
    with pytest.raises(ValueError, match="already a LiveEmbedding"):
        attach_live_embeddings(model.sparse_arch, ["u"], LiveEmbeddingConfig(rank=2))


def test_export_after_evictions_writes_rows_sorted_by_id(tmp_path):
    live = trained_live()
    live.evict(torch.tensor([3]), fold=True)  # the last row moves into the hole: unsorted
    assert live.ids.tolist() != sorted(live.ids.tolist())
    export_factors(live, tmp_path / "t.factors", table="user")
    other = make_live(seed=1)
    import_factors(other, tmp_path / "t.factors", table="user")
    other.base.weight.data.copy_(live.base.weight.data)
    values, offsets = bags()
    torch.testing.assert_close(other(values, offsets), live(values, offsets))


def torch_compaction(live: LiveEmbedding, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """What LiveEmbedding.evict's torch ops did before the admission kernel took the compaction
    over (fold=False): the expected storage after evicting ``rows``."""
    keys, a, last_used, a_accum = (t.clone() for t in live._store)
    ids = torch.unique(rows)
    pos, hit = live.slots(ids)
    pos = pos[hit]
    n, k = live.num_active, int(pos.numel())
    in_tail = torch.zeros(k, dtype=torch.bool)
    in_tail[pos[pos >= n - k] - (n - k)] = True
    movers, holes = torch.arange(n - k, n)[~in_tail], pos[pos < n - k]
    for t in (keys, a, last_used, a_accum):
        t[holes] = t[movers]
    return keys[: n - k], a[: n - k], last_used[: n - k], a_accum[: n - k]


@pytest.mark.parametrize("seed", range(6))
def test_evict_compacts_rows_exactly_as_the_torch_ops_did(seed):
    """The kernel's holes and movers, row for row (the LRU's order among tied ages follows the
    rows), and the index serves every kept id at its new row and none of the evicted."""
    gen = torch.Generator().manual_seed(seed)
    live = LiveEmbedding(nn.EmbeddingBag(500, 8, mode="sum"), LiveEmbeddingConfig(rank=3))
    live.activate(torch.randperm(500, generator=gen)[:120], 0.0, 200)
    with torch.no_grad():
        live.A.copy_(torch.randn(live.A.shape, generator=gen))
        live.a_accum.copy_(torch.rand(120, generator=gen))
        live.last_used.copy_(torch.rand(120, generator=gen))
    k = int(torch.randint(1, 60, (1,), generator=gen))
    rows = live.ids[torch.randperm(120, generator=gen)[:k]]
    rows = torch.cat([rows, rows[:3], torch.tensor([499, 498])])  # repeats, maybe inactive
    expected = torch_compaction(live, rows)
    gone = live.ids[torch.isin(live.ids, rows)].clone()
    assert live.evict(rows, fold=False) == gone.numel()
    for got, want in zip((live.keys, live.A, live.last_used, live.a_accum), expected, strict=True):
        assert torch.equal(got, want)
    assert torch.equal(live.index.rows(live.keys), torch.arange(1, live.num_active + 1).int())
    assert not bool(live.index.rows(gone).any())


def test_evict_kernel_refuses_repeated_or_outside_rows():
    live = make_live()
    live.activate(torch.arange(10), 0.0, 20)
    keys, a, last_used, a_accum = live._store
    args = (live.index.kernel_spec, keys.data_ptr(), a.data_ptr(), last_used.data_ptr())
    for bad in ([3, 3], [10], [-1]):
        pos = torch.tensor(bad)
        with pytest.raises(ValueError, match="distinct and in"):
            admission_kernel.evict(*args, a_accum.data_ptr(), R, 10, pos.data_ptr(), len(bad))
    assert torch.equal(live.keys, torch.arange(10))  # nothing changed
