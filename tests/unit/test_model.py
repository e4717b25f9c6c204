import pytest
import torch
from torch import nn

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM, DLRMConfig, InteractionArch
from dlrm_core.schema import SparseFeatureSpec, StreamSchema

SMALL = DLRMConfig(("a", "b", "c"), (10, 7, 5), 2, 4, (8, 4), (6, 1))


def small_batch() -> SparseBatch:
    return SparseBatch.from_ids(
        ["a", "b", "c"],
        [[[1], [2, 3], [9]], [[0], [], [6]], [[4], [4], [0, 1]]],
        dense=torch.tensor([[0.5, -1.0], [1.0, 2.0], [0.0, 0.3]]),
        labels=torch.tensor([1.0, 0.0, 1.0]),
    )


def test_seeded_logits_are_fixed():
    torch.manual_seed(0)
    logits = DLRM(SMALL)(small_batch())
    assert logits.shape == (3,)
    # Recorded once from torch 2.13 CPU with seed 0; a change means the model or its init moved.
    expected = torch.tensor([2.778470039367676, 2.178995132446289, 2.3761186599731445])
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)


def test_forward_matches_explicit_dlrm_math():
    torch.manual_seed(1)
    model = DLRM(SMALL)
    batch = small_batch()
    ids = [[[1], [2, 3], [9]], [[0], [], [6]], [[4], [4], [0, 1]]]
    expected = []
    for b in range(3):
        x = batch.dense[b]
        for layer in model.dense_arch.mlp:
            x = torch.relu(x @ layer.weight.T + layer.bias) if isinstance(layer, nn.Linear) else x
        vecs = [x]
        for f, table in enumerate(model.sparse_arch.tables):
            rows = ids[f][b]
            vecs.append(table.weight[rows].sum(0) if rows else torch.zeros(4))
        dots = [vecs[i] @ vecs[j] for i in range(4) for j in range(i + 1, 4)]
        z = torch.cat([x, torch.stack(dots)])
        linears = [m for m in model.over_arch.mlp if isinstance(m, nn.Linear)]
        for layer in linears[:-1]:
            z = torch.relu(z @ layer.weight.T + layer.bias)
        expected.append((z @ linears[-1].weight.T + linears[-1].bias)[0])
    torch.testing.assert_close(model(batch), torch.stack(expected), rtol=1e-5, atol=1e-5)


def test_shapes_of_each_arch():
    torch.manual_seed(0)
    model = DLRM(SMALL)
    batch = small_batch()
    assert model.dense_arch(batch.dense).shape == (3, 4)
    sparse = model.sparse_arch(batch)
    assert sparse.shape == (3, 3, 4)
    assert model.inter_arch(model.dense_arch(batch.dense), sparse).shape == (3, 4 + 6)
    assert SMALL.interaction_dim == 10


def test_interaction_is_upper_triangle_of_dots():
    dense = torch.tensor([[1.0, 0.0]])
    sparse = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]])
    out = InteractionArch(2)(dense, sparse)
    # [dense, d.s1, d.s2, s1.s2]
    assert out.tolist() == [[1.0, 0.0, 2.0, 0.0, 0.0]]


def test_frozen_tables_pool_in_one_kernel_call_under_grad():
    """A frozen model (a LiveTrainer's base) pools through the serving kernel with grad on:
    the same sums as the EmbeddingBags, and the kernel's own check of the ids."""
    torch.manual_seed(0)
    model = DLRM(SMALL)
    batch = small_batch()
    bags = model.sparse_arch(batch)  # trainable: the EmbeddingBags
    assert bags.requires_grad
    model.requires_grad_(False)
    pooled = model.sparse_arch(batch)
    torch.testing.assert_close(pooled, bags.detach())
    bad = SparseBatch.from_ids(
        ["a", "b", "c"], [[[10]], [[0]], [[0]]], dense=torch.zeros(1, 2), labels=torch.zeros(1)
    )
    with pytest.raises(IndexError, match="ids of 'a' must be in"):
        model.sparse_arch(bad)
    model.requires_grad_(True)  # trained tables keep torch's EmbeddingBags and their gradients
    assert model.sparse_arch(batch).requires_grad


def test_embedding_gradients_are_sparse():
    model = DLRM(SMALL)
    model(small_batch()).sum().backward()
    grad = model.sparse_arch.tables[0].weight.grad
    assert grad is not None and grad.is_sparse
    assert set(grad.coalesce().indices()[0].tolist()) == {1, 2, 3, 9}


def test_criteo_reference_shape():
    cfg = DLRMConfig.criteo_reference([100] * 26)
    assert cfg.embedding_dim == 16 and cfg.n_dense == 13
    assert cfg.bottom_mlp == (512, 256, 64, 16) and cfg.top_mlp == (512, 256, 1)
    model = DLRM(cfg)
    first_top = model.over_arch.mlp[0]
    assert first_top.in_features == 16 + 27 * 26 // 2
    widths = [m.out_features for m in model.dense_arch.mlp if isinstance(m, nn.Linear)]
    assert widths == [512, 256, 64, 16]


def test_from_schema_and_no_dense_features():
    schema = StreamSchema((SparseFeatureSpec("user", 50), SparseFeatureSpec("item", 30)), ())
    cfg = DLRMConfig.from_schema(schema, embedding_dim=8)
    assert cfg.feature_names == ("user", "item") and cfg.table_sizes == (50, 30)
    assert cfg.n_dense == 0 and cfg.bottom_mlp[-1] == 8 and cfg.top_mlp[-1] == 1
    batch = SparseBatch.from_ids(
        ["user", "item"], [[[1], [2]], [[3], [4]]], torch.zeros(2, 0), torch.zeros(2)
    )
    assert torch.isfinite(DLRM(cfg)(batch)).all()


def test_config_round_trip_and_bad_values():
    assert DLRMConfig.from_dict(SMALL.to_dict()) == SMALL
    with pytest.raises(ValueError, match="bottom_mlp must end at embedding_dim=4"):
        DLRMConfig(("a",), (3,), 1, 4, (8,), (1,))
    with pytest.raises(ValueError, match="top_mlp must end at 1"):
        DLRMConfig(("a",), (3,), 1, 4, (4,), (2,))
    with pytest.raises(ValueError, match=r"table_sizes\['a'\] must be in"):
        DLRMConfig(("a",), (0,), 1, 4, (4,), (1,))
    with pytest.raises(ValueError, match="one size per feature"):
        DLRMConfig(("a", "b"), (3,), 1, 4, (4,), (1,))


def test_batch_with_other_keys_or_dense_width_is_refused():
    model = DLRM(SMALL)
    batch = small_batch()
    with pytest.raises(ValueError, match="dense features"):
        model(SparseBatch(*_replace_dense(batch)))
    other = SparseBatch(("a", "c", "b"), *_fields(batch)[1:])
    with pytest.raises(ValueError, match="batch keys"):
        model(other)


def _fields(batch: SparseBatch) -> tuple:
    return (
        batch.keys,
        batch.values,
        batch.offsets,
        batch.dense,
        batch.labels,
        batch.timestamps,
        batch.request_ids,
    )


def _replace_dense(batch: SparseBatch) -> tuple:
    fields = list(_fields(batch))
    fields[3] = torch.zeros(3, 5)
    return tuple(fields)


def multi_hot_batch(gen: torch.Generator, sizes, n: int) -> SparseBatch:
    """Bags of 0-40 ids (past the kernel's prefetch distance), some empty."""
    ids = [
        [[int(i) for i in torch.randint(0, rows, (int(k),), generator=gen)] for k in lengths]
        for rows, lengths in zip(
            sizes, torch.randint(0, 40, (len(sizes), n), generator=gen), strict=True
        )
    ]
    return SparseBatch.from_ids(
        [f"f{i}" for i in range(len(sizes))], ids, torch.randn(n, 3), torch.zeros(n)
    )


@pytest.mark.parametrize("dim", [5, 8, 16, 24, 32, 40])
def test_inference_pools_with_the_kernel_exactly_as_the_embedding_bags_do(dim):
    """Dims of one to four vectors of eight sum in registers, others through memory."""
    torch.manual_seed(0)
    sizes = (50, 7, 300)
    model = DLRM(DLRMConfig(tuple(f"f{i}" for i in range(3)), sizes, 3, dim, (4, dim), (6, 1)))
    batch = multi_hot_batch(torch.Generator().manual_seed(1), sizes, 33)
    tables = model.sparse_arch.tables
    expected = torch.stack(
        [t(v, o) for t, v, o in zip(tables, batch.values, batch.offsets, strict=True)], 1
    )
    with torch.no_grad():
        pooled = model.sparse_arch(batch)  # the kernel's path
        torch.testing.assert_close(pooled, expected.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(model(batch), DLRM.logits(model, batch, expected.detach()))
    assert model.sparse_arch(batch).requires_grad  # with gradients: torch's EmbeddingBags


def test_kept_pooling_layout_follows_replaced_tables_and_weights():
    """The kernel's layout is kept between calls, so each change that it depends on must show:
    a new weight, new storage under the same weight, a replaced table, a table it cannot pool."""
    torch.manual_seed(0)
    sizes = (50, 7, 300)
    model = DLRM(DLRMConfig(tuple(f"f{i}" for i in range(3)), sizes, 3, 5, (4, 5), (6, 1)))
    batch = multi_hot_batch(torch.Generator().manual_seed(1), sizes, 33)
    arch = model.sparse_arch

    def bags() -> torch.Tensor:
        return torch.stack(
            [t(v, o) for t, v, o in zip(arch.tables, batch.values, batch.offsets, strict=True)], 1
        )

    with torch.no_grad():
        arch(batch)
        arch.tables[0].weight = nn.Parameter(torch.randn(50, 5))
        torch.testing.assert_close(arch(batch), bags(), rtol=1e-6, atol=1e-6)
        arch.tables[1].weight.data = torch.randn(7, 5)  # same Parameter, other storage
        torch.testing.assert_close(arch(batch), bags(), rtol=1e-6, atol=1e-6)
        arch.set_table("f2", nn.EmbeddingBag(300, 5, mode="sum"))
        torch.testing.assert_close(arch(batch), bags(), rtol=1e-6, atol=1e-6)
        arch.set_table("f2", nn.EmbeddingBag(300, 5, mode="mean"))  # not the kernel's sum
        torch.testing.assert_close(arch(batch), bags(), rtol=1e-6, atol=1e-6)


def test_inference_refuses_ids_outside_a_table_naming_it():
    model = DLRM(DLRMConfig(("a", "b"), (10, 4), 1, 2, (2,), (2, 1)))
    batch = SparseBatch.from_ids(
        ("a", "b"), [[[9], [0]], [[3], [4]]], torch.zeros(2, 1), torch.zeros(2)
    )
    with torch.no_grad(), pytest.raises(IndexError, match=r"ids of 'b' must be in \[0, 4\)"):
        model(batch)
    with pytest.raises(RuntimeError, match="index"):  # torch's own check, training path
        model(batch)


def test_the_bottom_mlps_layer_parameters_are_its_parameters():
    arch = DLRM(SMALL).dense_arch
    assert [id(p) for p in arch.layer_parameters()] == [id(p) for p in arch.parameters()]
