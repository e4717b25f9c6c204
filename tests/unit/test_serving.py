import copy

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.factor_store import BasePatch
from dlrm_core.live_embedding import LiveEmbeddingConfig, attach_live_embeddings
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.serving import RankGroup, ServingDelta
from dlrm_core.table_factors import TableFactors

# Tiny tensors: one torch thread avoids OpenMP stalls on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


CFG = DLRMConfig(("a", "b", "c", "d"), (40, 30, 20, 10), 2, 6, (8, 6), (8, 1))


def batch(gen, size=32):
    ids = [
        [[int(i) for i in torch.randint(0, n, (int(k),), generator=gen)] for k in lens]
        for n, lens in zip(
            CFG.table_sizes, torch.randint(0, 4, (4, size), generator=gen), strict=True
        )
    ]
    return SparseBatch.from_ids(CFG.feature_names, ids, torch.randn(size, 2), torch.ones(size))


def live_twin(names: list[str], rank: int) -> tuple[DLRM, DLRM, dict]:
    """A seeded plain DLRM and a copy of it whose ``names`` tables are LiveEmbeddings."""
    torch.manual_seed(0)
    plain = DLRM(CFG)
    live_model = copy.deepcopy(plain)
    lives = attach_live_embeddings(live_model.sparse_arch, names, LiveEmbeddingConfig(rank))
    return plain, live_model, lives


def activate_at_random(lives, gen, parts: int, fresh_b: bool) -> None:
    """Activate a random 1/parts of each table's rows with random A (and a random B if
    fresh_b)."""
    for name, live in lives.items():
        n = CFG.table_sizes[CFG.feature_names.index(name)]
        live.activate(torch.randperm(n, generator=gen)[: n // parts], now=0.0, max_active=n)
        b = torch.randn(live.rank, CFG.embedding_dim, generator=gen) if fresh_b else live.B
        live.set_factors(torch.randn(live.num_active, live.rank, generator=gen), b)


def test_serving_delta_matches_the_per_table_live_embeddings():
    gen = torch.Generator().manual_seed(1)
    plain, live_model, lives = live_twin(["a", "b", "d"], rank=2)
    lives["b"].set_factors(torch.zeros(0, 3), torch.randn(3, 6))  # a second rank group
    activate_at_random(lives, gen, parts=2, fresh_b=False)
    for live in lives.values():
        live.scale = 0.7
    delta = ServingDelta.from_factors(
        7, CFG.feature_names, CFG.table_sizes, {n: lv.factors() for n, lv in lives.items()}
    )
    assert [g.features for g in delta.groups] == [(0, 3), (1,)]
    assert delta.groups[0].index.key_dtype == torch.int32  # 100 rows in all: int32 keys
    # A and B of the factors, plus per group a zero row of A and the index's (key, row) slots
    # and hash multipliers
    per_group = sum(
        g.index.slots.numel() * 4 + g.index.multipliers.nbytes + g.a.shape[1] * 4
        for g in delta.groups
    )
    assert delta.nbytes == per_group + sum(
        lv.A.numel() * 4 + lv.B.numel() * 4 for lv in lives.values()
    )
    probe = batch(gen)
    with torch.no_grad():
        torch.testing.assert_close(plain(probe, delta), live_model(probe))
        assert not torch.allclose(plain(probe), live_model(probe))


def test_a_version_and_its_folded_rows_reproduce_the_trainer_model():
    torch.manual_seed(0)
    trainer_model = DLRM(CFG)
    inference = copy.deepcopy(trainer_model)
    lives = attach_live_embeddings(trainer_model.sparse_arch, ["a"], LiveEmbeddingConfig(2))
    live = lives["a"]
    live.activate(torch.arange(10), now=0.0, max_active=40)
    live.set_factors(torch.randn(10, 2), live.B)
    live.evict(torch.tensor([3, 4]), fold=True)

    patch = BasePatch.empty(6).extended(live, live.take_folded())
    assert patch.ids.tolist() == [3, 4]
    with torch.no_grad():  # as the node's version installer writes folded rows
        inference.sparse_arch.table("a").weight[patch.ids] = patch.rows
    delta = ServingDelta.from_factors(1, CFG.feature_names, CFG.table_sizes, {"a": live.factors()})
    probe = batch(torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(inference(probe, delta), trainer_model(probe))


def test_ids_at_table_boundaries_and_an_empty_table():
    plain, live_model, lives = live_twin(["a", "b", "c"], rank=2)
    for name in ("a", "b"):  # the first and last row of each table, where key ranges meet
        n = CFG.table_sizes[CFG.feature_names.index(name)]
        lives[name].activate(torch.tensor([0, n - 1]), now=0.0, max_active=n)
        lives[name].set_factors(torch.randn(2, 2), lives[name].B)
    delta = ServingDelta.from_factors(
        1, CFG.feature_names, CFG.table_sizes, {n: lv.factors() for n, lv in lives.items()}
    )
    assert [g.features for g in delta.groups] == [(0, 1)]  # c has no active row: no work
    edges = [[[0], [n - 1], [1], [n - 2], [0, n - 1], []] for n in CFG.table_sizes]
    probe = SparseBatch.from_ids(CFG.feature_names, edges, torch.randn(6, 2), torch.ones(6))
    with torch.no_grad():
        torch.testing.assert_close(plain(probe, delta), live_model(probe))


def test_tables_beyond_int32_keys_use_int64_keys():
    huge = (2**31, 2**31 + 5)  # rows of two tables: their keys do not fit in int32
    gen = torch.Generator().manual_seed(0)
    ids = [torch.tensor([0, 7, 2**31 - 1]), torch.tensor([3, 2**31 + 4])]
    tables = {
        name: TableFactors(i, torch.randn(i.numel(), 2, generator=gen), torch.randn(2, 3), 0.5)
        for name, i in zip(("x", "y"), ids, strict=True)
    }
    delta = ServingDelta.from_factors(2, ("x", "y"), huge, tables)
    assert delta.groups[0].index.key_dtype == torch.int64
    bags = [[[0, 7], [1], [2**31 - 1]], [[2**31 + 4, 3], [2**31 + 3], [3]]]
    probe = SparseBatch.from_ids(("x", "y"), bags, torch.zeros(3, 0), torch.ones(3))
    pooled = torch.zeros(3, 2, 3)
    delta.add_to_(pooled, probe)
    expected = torch.zeros(3, 2, 3)
    for f, name in enumerate(("x", "y")):
        t = tables[name]
        for b, bag in enumerate(bags[f]):
            for i in bag:
                hit = (t.ids == i).nonzero()
                if hit.numel():
                    expected[b, f] += t.a[int(hit)] @ t.b * t.scale
    torch.testing.assert_close(pooled, expected)
    assert expected[1, 0].abs().sum() == 0 and expected[0, 1].abs().sum() > 0


def test_a_group_with_a_gap_adds_in_place_and_leaves_other_features_alone():
    gen = torch.Generator().manual_seed(4)
    plain, live_model, lives = live_twin(["a", "b", "d"], rank=3)
    activate_at_random(lives, gen, parts=3, fresh_b=True)
    delta = ServingDelta.from_factors(
        3, CFG.feature_names, CFG.table_sizes, {n: lv.factors() for n, lv in lives.items()}
    )
    assert delta.groups[0].features == (0, 1, 3)
    probe = batch(gen)
    with torch.no_grad():
        base = plain.sparse_arch(probe)
        pooled = base.clone()
        delta.add_to_(pooled, probe)
        torch.testing.assert_close(pooled, live_model.sparse_arch(probe))
        assert torch.equal(pooled[:, 2], base[:, 2])


def explicit_delta(tables: dict, names, bags_by_feature, batch_size, dim) -> torch.Tensor:
    """(B, F, D) the correction summed id by id from the factors (float64): the reference."""
    out = torch.zeros(batch_size, len(names), dim, dtype=torch.float64)
    for f, name in enumerate(names):
        t = tables.get(name)
        if t is None:
            continue
        dense = torch.zeros(int(t.ids.max()) + 1 if t.ids.numel() else 0, dim, dtype=torch.float64)
        dense[t.ids] = t.a.double() @ t.b.double() * t.scale
        for b, bag in enumerate(bags_by_feature[f]):
            for i in bag:
                if i < dense.shape[0]:
                    out[b, f] += dense[i]
    return out


@pytest.mark.parametrize("rank", [1, 8, 37])
def test_the_kernel_matches_the_correction_summed_id_by_id(rank):
    """Long multi-hot bags (past the kernel's prefetch distance), empty bags, repeated ids,
    inactive ids and two rank groups, against the float64 sum over ids."""
    gen = torch.Generator().manual_seed(rank)
    names, rows, dim, n = ("p", "q", "r"), (500, 300, 2000), 5, 40
    tables = {
        "p": TableFactors(
            torch.randperm(500, generator=gen)[:200],
            torch.randn(200, rank, generator=gen),
            torch.randn(rank, dim, generator=gen),
            0.3,
        ),
        "r": TableFactors(
            torch.randperm(2000, generator=gen)[:50],
            torch.randn(50, 2, generator=gen),
            torch.randn(2, dim, generator=gen),
            1.0,
        ),
    }
    lengths = [[int(k) for k in torch.randint(0, 60, (n,), generator=gen)] for _ in names]
    bags = [
        [[int(i) for i in torch.randint(0, rows[f], (k,), generator=gen)] for k in lengths[f]]
        for f in range(len(names))
    ]
    bags[2][0] = [int(tables["r"].ids[0])] * 5  # one active id five times in one bag
    probe = SparseBatch.from_ids(names, bags, torch.zeros(n, 0), torch.ones(n))
    delta = ServingDelta.from_factors(1, names, rows, tables)
    start = torch.randn(n, len(names), dim, generator=gen)
    pooled = start.clone()
    delta.add_to_(pooled, probe)
    expected = start.double() + explicit_delta(tables, names, bags, n, dim)
    torch.testing.assert_close(pooled.double(), expected, rtol=1e-5, atol=1e-4)
    assert torch.equal(pooled[:, 1], start[:, 1])  # q has no factors


def probe_rest(probe: SparseBatch) -> tuple[torch.Tensor, ...]:
    return probe.dense, probe.labels, probe.timestamps, probe.request_ids


def test_the_kernel_refuses_inputs_whose_layout_it_cannot_read():
    tables = {"x": TableFactors(torch.tensor([1, 4]), torch.randn(2, 3), torch.randn(3, 4), 1.0)}
    delta = ServingDelta.from_factors(1, ("x",), (10,), tables)
    probe = SparseBatch.from_ids(("x",), [[[1], [4, 2]]], torch.zeros(2, 0), torch.ones(2))
    with pytest.raises(ValueError, match="pooled must be contiguous float32"):
        delta.add_to_(torch.zeros(2, 1, 4, dtype=torch.float64), probe)
    with pytest.raises(ValueError, match="pooled must be contiguous float32"):
        delta.add_to_(torch.zeros(2, 1, 8)[:, :, ::2], probe)
    with pytest.raises(ValueError, match="pooled must be contiguous float32"):
        delta.add_to_(torch.zeros(2, 1, 5), probe)  # D differs from B's
    group = delta.groups[0]
    with pytest.raises(TypeError, match="a must be contiguous float32"):
        RankGroup(group.features, group.key_offsets, group.index, group.a.double(), group.b)
    with pytest.raises(ValueError, match="the index names row 2 of 2 in a"):
        RankGroup(group.features, group.key_offsets, group.index, group.a[:2], group.b)
    with pytest.raises(ValueError, match="b \\(T=1, r, D\\)"):
        RankGroup(group.features, group.key_offsets, group.index, group.a, group.b[:, :2])
    every_other = torch.tensor([1, 9, 4, 9])[::2]
    with pytest.raises(ValueError, match="values and offsets of 'x' must be contiguous"):
        SparseBatch(("x",), (every_other,), (torch.tensor([0, 1]),), *probe_rest(probe))
