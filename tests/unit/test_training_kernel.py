"""The training kernel (dlrm_core/_training_kernel.c) against the torch autograd path it replaces.

The correction: LiveGroup's forward, backward and step on random groups (shapes, ranks 1..D,
empty bags, repeated ids, inactive ids, scale), against the torch path: EmbeddingBag with
per-sample weights and bmm under autograd, the hook's Gram matrices, factor_optim's row-wise
Adagrad and Adam. The cluster: FullSparseTrainer's fused sparse step against torch.optim.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.factor_optim import adam_, rowwise_adagrad_rows_
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.live_group import LiveGroup
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = {"atol": 1e-5, "rtol": 1e-5}


def random_group(gen, tables, rank, dim, rows, scale):
    """A LiveGroup of ``tables`` tables of rank ``rank``, random A, B and optimizer state."""
    lives = []
    for _ in range(tables):
        live = LiveEmbedding(
            torch.nn.EmbeddingBag(50, dim, mode="sum"), LiveEmbeddingConfig(rank=rank, scale=scale)
        )
        lives.append(live)
    group = LiveGroup(lives, list(range(tables)), 0, rows)
    group.a.copy_(torch.randn(rows, rank, generator=gen))
    group.b.copy_(torch.randn(tables, rank, dim, generator=gen))
    group.b_m.copy_(torch.randn(tables, rank, dim, generator=gen) * 0.1)
    group.b_v.copy_(torch.rand(tables, rank, dim, generator=gen) * 0.1)
    group.controllers = [
        RankController(live, f"t{t}", RankPolicy(r_min=1, r_max=dim), 10**9)
        for t, live in enumerate(lives)
    ]
    return group


def random_bags(gen, tables, batch, rows):
    """Keys (U,) with their rows and hits, each value's key and the bags' starts: bags of 0 to
    4 values, ids repeated within and across bags, about a third of the keys inactive."""
    keys = int(torch.randint(1, 3 * rows + 2, (1,), generator=gen))
    lengths = torch.randint(0, 5, (tables * batch,), generator=gen)
    lengths[torch.rand(tables * batch, generator=gen) < 0.2] = 0  # more empty bags
    index = torch.randint(0, keys, (int(lengths.sum()),), generator=gen)
    offsets = torch.cumsum(lengths, 0) - lengths
    pos = torch.randint(0, rows, (keys,), generator=gen)
    hit = torch.rand(keys, generator=gen) < 0.66
    # distinct active keys have distinct rows (a key's row is its own)
    hit_rows = torch.randperm(rows, generator=gen)[: int(hit.sum())]
    hit &= torch.cumsum(hit, 0) <= rows
    pos[hit] = hit_rows[: int(hit.sum())]
    return pos, hit, index, offsets


def torch_step(group, pos, hit, index, offsets, batch, out_grad, lr_a, lr_b, accum, active):
    """The torch autograd path: the deltas, then A's and B's gradients, Grams and steps."""
    a, b = group.a.clone(), group.b.clone()
    b_m, b_v, accum = group.b_m.clone(), group.b_v.clone(), accum.clone()
    weights = hit.float().index_select(0, index)
    pooled_a = F.embedding_bag(
        pos.index_select(0, index), a, offsets, mode="sum", per_sample_weights=weights
    ).requires_grad_(True)
    b_leaf = b.clone().requires_grad_(True)
    delta = torch.bmm(pooled_a.view(group.size, batch, -1), b_leaf) * group.scale
    grams = []
    delta.register_hook(lambda g: grams.append(torch.bmm(g.transpose(1, 2), g)))
    delta.backward(out_grad)
    finite = bool(torch.isfinite(pooled_a.grad).all() and torch.isfinite(b_leaf.grad).all())
    bags = torch.repeat_interleave(
        torch.arange(offsets.numel()), torch.diff(offsets, append=torch.tensor([index.numel()]))
    )
    per_value = pooled_a.grad.index_select(0, bags) * weights.unsqueeze(1)
    a_grad = torch.zeros(pos.numel(), group.rank).index_put_((index,), per_value, accumulate=True)
    with torch.no_grad():
        rowwise_adagrad_rows_(a, accum, pos[hit], a_grad[hit], lr_a)
        for t, step in active.items():
            adam_(b[t], b_leaf.grad[t], b_m[t], b_v[t], step, lr_b)
    return delta.detach(), finite, a, accum, b, b_m, b_v, grams[0]


@pytest.mark.parametrize("seed", range(12))
def test_correction_matches_autograd(seed):
    gen = torch.Generator().manual_seed(seed)
    dim = int(torch.randint(1, 20, (1,), generator=gen))
    rank = int(torch.randint(1, dim + 1, (1,), generator=gen))  # 1..D
    tables = int(torch.randint(1, 5, (1,), generator=gen))
    batch = int(torch.randint(1, 40, (1,), generator=gen))
    rows = int(torch.randint(1, 60, (1,), generator=gen))
    scale = (1.0, 0.5, 2.0)[seed % 3]
    group = random_group(gen, tables, rank, dim, rows, scale)
    accum = torch.rand(rows, generator=gen)
    pos, hit, index, offsets = random_bags(gen, tables, batch, rows)
    # the deltas' gradient arrives as the transposed view index_add_'s backward gives
    out_grad = torch.randn(batch, tables, dim, generator=gen).transpose(0, 1)
    for t, live in enumerate(group.lives):  # table 0 has no active rows: no B step
        live.keys = torch.arange(0 if t == 0 and tables > 1 else 3)
        live.b_steps = t + 2
    active = {t: live.b_steps + 1 for t, live in enumerate(group.lives) if live.num_active}
    want = torch_step(group, pos, hit, index, offsets, batch, out_grad, 0.1, 0.01, accum, active)
    grams_before = [c._grad_gram.clone() for c in group.controllers]
    with torch.no_grad():  # the scoring forward (no state kept for a step) is the same
        torch.testing.assert_close(group.pooled(pos, hit, index, offsets, batch), want[0], **TOL)

    delta = group.pooled(pos, hit, index, offsets, batch)
    assert delta.requires_grad
    torch.testing.assert_close(delta.detach(), want[0], **TOL)
    delta.backward(out_grad)
    assert group.grads_finite() is want[1] is True
    group.step(accum, 0.1, 0.01)
    for got, expected in zip(
        (group.a, accum, group.b, group.b_m, group.b_v), want[2:7], strict=True
    ):
        torch.testing.assert_close(got, expected, **TOL)
    for t, ctl in enumerate(group.controllers):
        observed = want[7][t] if t in active else torch.zeros(dim, dim)
        torch.testing.assert_close(ctl._grad_gram - grams_before[t], observed, **TOL)


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gradient_is_reported_and_changes_nothing(bad):
    gen = torch.Generator().manual_seed(1)
    group = random_group(gen, 2, 3, 8, 20, 1.0)
    pos, hit, index, offsets = random_bags(gen, 2, 16, 20)
    out_grad = torch.randn(2, 16, 8, generator=gen)
    out_grad[1, 5, 2] = bad
    before = [x.clone() for x in (group.a, group.b, group.b_m, group.b_v)]
    delta = group.pooled(pos, hit, index, offsets, 16)
    delta.backward(out_grad)
    # the torch path sees it too: A's gradient of some bag is not finite
    assert not torch_step(
        group, pos, hit, index, offsets, 16, out_grad, 0.1, 0.1, torch.zeros(20), {}
    )[1]
    assert group.grads_finite() is False
    group.drop_grads()  # what the trainer's rollback does
    assert group.grads_finite() is True  # nothing pending
    for x, y in zip((group.a, group.b, group.b_m, group.b_v), before, strict=True):
        assert torch.equal(x, y)


def test_out_of_range_bags_are_refused():
    gen = torch.Generator().manual_seed(2)
    group = random_group(gen, 1, 2, 4, 5, 1.0)
    pos, hit = torch.tensor([0, 7]), torch.tensor([True, True])  # row 7 of 5
    with pytest.raises(IndexError, match="out of range"):
        group.pooled(pos, hit, torch.tensor([0, 1]), torch.tensor([0, 1]), 2)
    hit = torch.tensor([True, False])  # an inactive key's row is never read
    assert group.pooled(pos, hit, torch.tensor([0, 1]), torch.tensor([0, 1]), 2).shape == (1, 2, 4)
    with pytest.raises(IndexError, match="out of range"):  # key 2 of 2
        group.pooled(pos, hit, torch.tensor([0, 2]), torch.tensor([0, 1]), 2)
    with pytest.raises(IndexError, match="out of range"):  # bags out of order
        group.pooled(pos, hit, torch.tensor([0, 1]), torch.tensor([1, 0]), 2)
