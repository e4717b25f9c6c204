"""The cluster's fused sparse step (FullSparseTrainer through sparse_optim.SparseRowOptimizer and
the training kernel) against torch.optim on the same batches."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.sparse_optim import SparseRowOptimizer
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NAMES, ROWS = ("user", "item", "ctx"), (30, 7, 50)
CFG = DLRMConfig(NAMES, ROWS, 3, 8, (16, 8), (16, 1))


def batches(count, size=24, seed=5):
    """Multi-hot bags of 0 to 3 ids from small tables: empty bags, ids repeated in and across
    bags."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        lengths = [torch.randint(0, 4, (size,), generator=gen) for _ in NAMES]
        out.append(
            SparseBatch(
                NAMES,
                tuple(
                    torch.randint(0, rows, (int(n.sum()),), generator=gen)
                    for rows, n in zip(ROWS, lengths, strict=True)
                ),
                tuple(torch.cumsum(n, 0) - n for n in lengths),
                torch.randn(size, 3, generator=gen),
                (torch.rand(size, generator=gen) < 0.4).float(),
                torch.full((size,), float(i), dtype=torch.float64),
                torch.arange(i * size, (i + 1) * size),
            )
        )
    return out


class TorchStep:
    """The step FullSparseTrainer took before the fused one: EmbeddingBag's sparse gradients
    and torch.optim over every parameter."""

    def __init__(self, model, config):
        self.model = model
        opt = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adagrad
        self.dense = opt(model.dense_parameters(), lr=config.lr_dense)
        self.sparse = opt(model.embedding_parameters(), lr=config.lr_sparse)

    def step(self, batch):
        self.dense.zero_grad(set_to_none=True)
        self.sparse.zero_grad(set_to_none=True)
        F.binary_cross_entropy_with_logits(self.model(batch), batch.labels).backward()
        grads = [p.grad for p in self.model.parameters()]
        values = [g.coalesce().values() if g.is_sparse else g for g in grads]
        if not all(bool(torch.isfinite(v).all()) for v in values):
            return None
        touched = {}
        for name, param in zip(NAMES, self.model.embedding_parameters(), strict=True):
            grad = param.grad.coalesce()
            touched[name] = (grad.indices()[0], grad.values().norm(dim=1))
        self.dense.step()
        self.sparse.step()
        return touched


@pytest.mark.parametrize("optimizer", ["adagrad", "sgd"])
def test_fused_step_matches_torch_optim(optimizer):
    torch.manual_seed(0)
    config = FullTrainConfig(optimizer, lr_dense=0.05, lr_sparse=0.3)
    fused = FullSparseTrainer(DLRM(CFG), config)
    reference = TorchStep(copy.deepcopy(fused.model), config)
    for batch in batches(10):
        result = fused.step(batch)
        touched = reference.step(batch)
        assert not result.skipped and touched is not None
        for name in NAMES:
            assert torch.equal(result.touched[name][0], touched[name][0])
            torch.testing.assert_close(
                result.touched[name][1], touched[name][1], atol=1e-5, rtol=1e-5
            )
        for got, want in zip(fused.model.parameters(), reference.model.parameters(), strict=True):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    moved = fused.model.sparse_arch.tables[0].weight
    assert not torch.equal(moved, DLRM(CFG).sparse_arch.tables[0].weight)  # it trained


def test_a_non_finite_gradient_skips_the_step_and_changes_nothing():
    torch.manual_seed(0)
    fused = FullSparseTrainer(DLRM(CFG), FullTrainConfig("adagrad", 0.05, 0.3))
    batch = batches(1)[0]
    fused.step(batch)
    before = [p.detach().clone() for p in fused.model.parameters()]
    state = [s.clone() for s in fused.sparse_opt.state]

    def poison(module, inputs, out):  # the loss stays finite, the pooled gradient does not
        out.register_hook(lambda g: torch.where(torch.rand_like(g) < 0.1, math.inf, g))

    handle = fused.model.inter_arch.register_forward_hook(poison)
    result = fused.step(batch)
    handle.remove()
    assert result.skipped and fused.skipped == 1
    for x, y in zip(fused.model.parameters(), before, strict=True):
        assert torch.equal(x, y)
    for x, y in zip(fused.sparse_opt.state, state, strict=True):
        assert torch.equal(x, y)
    assert not fused.step(batch).skipped


def test_bad_tables_and_gradients_are_refused():
    with pytest.raises(ValueError, match="optimizer"):
        SparseRowOptimizer([torch.zeros(3, 4)], "adam", 0.1)
    with pytest.raises(TypeError, match="float32"):
        SparseRowOptimizer([torch.zeros(3, 4, dtype=torch.float64)], "sgd", 0.1)
    with pytest.raises(TypeError, match="contiguous"):
        SparseRowOptimizer([torch.zeros(4, 3).T], "sgd", 0.1)
    opt = SparseRowOptimizer([torch.zeros(r, 8) for r in ROWS], "sgd", 0.1)
    batch = batches(1)[0]
    with pytest.raises(ValueError, match=r"\(B, F, D\)"):
        opt.step(batch, torch.zeros(batch.batch_size, 2, 8))
