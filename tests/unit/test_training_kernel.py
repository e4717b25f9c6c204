"""The training kernel (dlrm_core/_training_kernel.c) against the torch autograd path it replaces.

The correction: live_group.Correction's forward, backward and step over random rank groups at
once (shapes, ranks 1..D, several groups, tables in any of the model's columns, empty bags,
repeated ids, inactive ids, scale), against the torch path group by group: EmbeddingBag with
per-sample weights and bmm under autograd, added into the pooled embeddings, the hook's Gram
matrices, factor_optim's row-wise Adagrad and Adam. (The cluster's fused sparse step:
test_sparse_optim.py.)
"""

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.factor_optim import adam_, rowwise_adagrad_rows_
from dlrm_core.kernel import all_finite
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.live_group import Correction, LiveGroup
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankPolicy

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOL = {"atol": 1e-5, "rtol": 1e-5}


@dataclass
class Case:
    """Random groups over one batch: the kernel's inputs, member-major, and each group's part."""

    groups: list[LiveGroup]
    lives: list[LiveEmbedding]  # the members'
    controllers: list[RankController]
    key_bounds: list[int]
    pos: torch.Tensor  # (U,) rows of the buffers
    hit: torch.Tensor
    index: torch.Tensor  # (nnz,) global keys
    offsets: torch.Tensor  # (M * B,) global value positions
    features: torch.Tensor  # (M,) columns
    batch: int
    n_features: int
    dim: int
    accum: torch.Tensor  # the buffers' accumulators

    def correction(self) -> Correction:
        return Correction(
            self.groups,
            self.key_bounds,
            self.pos,
            self.hit,
            self.index,
            self.offsets,
            self.features,
            self.batch,
            self.n_features,
        )


def random_case(gen, n_groups, batch, dim, scale, empty_member=True):
    """``n_groups`` groups of 1-3 tables each of a random rank in 1..dim, in random columns of
    (batch, F, dim); bags of 0 to 4 values, ids repeated within and across bags, about a third
    of the keys inactive; the first member has no active rows when ``empty_member``."""
    groups, lives, controllers, key_bounds = [], [], [], [0]
    pos_parts, hit_parts, index_parts, lengths_parts = [], [], [], []
    row0 = 0
    for _ in range(n_groups):
        tables = int(torch.randint(1, 4, (1,), generator=gen))
        rank = int(torch.randint(1, dim + 1, (1,), generator=gen))
        rows = int(torch.randint(1, 40, (1,), generator=gen))
        members = []
        for _ in range(tables):
            live = LiveEmbedding(
                torch.nn.EmbeddingBag(50, dim, mode="sum"),
                LiveEmbeddingConfig(rank=rank, scale=scale),
            )
            live.keys = torch.arange(0 if empty_member and not lives else 3)
            live.b_steps = len(lives) + 2
            members.append(live)
            lives.append(live)
            controllers.append(
                RankController(live, f"t{len(lives)}", RankPolicy(r_min=1, r_max=dim), 10**9)
            )
        group = LiveGroup(members, len(lives) - tables, row0, rows)
        group.a.copy_(torch.randn(rows, rank, generator=gen))
        group.b.copy_(torch.randn(tables, rank, dim, generator=gen))
        group.b_m.copy_(torch.randn(tables, rank, dim, generator=gen) * 0.1)
        group.b_v.copy_(torch.rand(tables, rank, dim, generator=gen) * 0.1)
        groups.append(group)
        keys = int(torch.randint(1, 3 * rows + 2, (1,), generator=gen))
        lengths = torch.randint(0, 5, (tables * batch,), generator=gen)
        lengths[torch.rand(tables * batch, generator=gen) < 0.2] = 0  # more empty bags
        index_parts.append(
            torch.randint(0, keys, (int(lengths.sum()),), generator=gen) + key_bounds[-1]
        )
        lengths_parts.append(lengths)
        pos = torch.randint(0, rows, (keys,), generator=gen)
        hit = torch.rand(keys, generator=gen) < 0.66
        hit &= torch.cumsum(hit, 0) <= rows
        # distinct active keys have distinct rows (a key's row is its own)
        pos[hit] = torch.randperm(rows, generator=gen)[: int(hit.sum())]
        pos_parts.append(pos + row0)
        hit_parts.append(hit)
        key_bounds.append(key_bounds[-1] + keys)
        row0 += rows
    lengths = torch.cat(lengths_parts)
    n_features = len(lives) + int(torch.randint(0, 3, (1,), generator=gen))
    return Case(
        groups,
        lives,
        controllers,
        key_bounds,
        torch.cat(pos_parts),
        torch.cat(hit_parts),
        torch.cat(index_parts),
        torch.cumsum(lengths, 0) - lengths,
        torch.randperm(n_features, generator=gen)[: len(lives)],
        batch,
        n_features,
        dim,
        torch.rand(row0, generator=gen),
    )


def torch_group(case, g, pooled, out_grad, lr_a, lr_b):
    """The torch autograd path of group ``g``: its deltas added into ``pooled`` (a copy), A's
    and B's gradients, Grams and steps. Returns (pooled, finite, a, accum rows, b, b_m, b_v,
    grams)."""
    group = case.groups[g]
    m0, m1, b = group.member0, group.member0 + group.size, case.batch
    k0, k1 = case.key_bounds[g], case.key_bounds[g + 1]
    v0 = int(case.offsets[m0 * b]) if m0 * b < case.offsets.numel() else case.index.numel()
    v1 = int(case.offsets[m1 * b]) if m1 * b < case.offsets.numel() else case.index.numel()
    pos, hit = case.pos[k0:k1] - group.row0, case.hit[k0:k1]
    index, offsets = case.index[v0:v1] - k0, case.offsets[m0 * b : m1 * b] - v0
    a, b_, accum = group.a.clone(), group.b.clone(), case.accum.clone()
    b_m, b_v = group.b_m.clone(), group.b_v.clone()
    weights = hit.float().index_select(0, index)
    pooled_a = F.embedding_bag(
        pos.clamp(0).index_select(0, index), a, offsets, mode="sum", per_sample_weights=weights
    ).requires_grad_(True)
    b_leaf = b_.clone().requires_grad_(True)
    delta = torch.bmm(pooled_a.view(group.size, b, -1), b_leaf) * group.scale
    grams = []
    delta.register_hook(lambda grad: grams.append(torch.bmm(grad.transpose(1, 2), grad)))
    columns = case.features[m0:m1]
    pooled = pooled.clone()
    pooled.index_add_(1, columns, delta.detach().transpose(0, 1))
    delta.backward(out_grad[:, columns, :].transpose(0, 1))
    finite = bool(torch.isfinite(pooled_a.grad).all() and torch.isfinite(b_leaf.grad).all())
    bags = torch.repeat_interleave(
        torch.arange(offsets.numel()), torch.diff(offsets, append=torch.tensor([index.numel()]))
    )
    per_value = pooled_a.grad.index_select(0, bags) * weights.unsqueeze(1)
    a_grad = torch.zeros(k1 - k0, group.rank).index_put_((index,), per_value, accumulate=True)
    with torch.no_grad():
        rows = accum[group.row0 : group.row0 + group.rows]
        rowwise_adagrad_rows_(a, rows, pos[hit], a_grad[hit], lr_a)
        for t, live in enumerate(group.lives):
            if live.num_active:
                adam_(b_[t], b_leaf.grad[t], b_m[t], b_v[t], live.b_steps + 1, lr_b)
    return pooled, finite, a, rows, b_, b_m, b_v, grams[0]


@pytest.mark.parametrize("seed", range(16))
def test_correction_matches_autograd(seed):
    gen = torch.Generator().manual_seed(seed)
    check_against_autograd(seed, gen, int(torch.randint(1, 20, (1,), generator=gen)))


@pytest.mark.parametrize("dim", [24, 32, 40, 64, 69])
def test_correction_matches_autograd_at_wide_dims(dim):
    """Dims of three, four and more vectors of eight (the kernel's register tiles by width),
    with ranks of several vectors."""
    check_against_autograd(dim, torch.Generator().manual_seed(dim), dim)


def check_against_autograd(seed, gen, dim):
    batch = int(torch.randint(1, 40, (1,), generator=gen))
    scale = (1.0, 0.5, 2.0)[seed % 3]
    case = random_case(gen, 1 + seed % 3, batch, dim, scale)
    pooled = torch.randn(batch, case.n_features, dim, generator=gen)
    out_grad = torch.randn(batch, case.n_features, dim, generator=gen)
    want, expected = [], pooled
    for g in range(len(case.groups)):
        want.append(torch_group(case, g, expected, out_grad, 0.1, 0.01))
        expected = want[-1][0]
    grams_before = [c._grad_gram.full() for c in case.controllers]  # packed: unpacked
    with torch.no_grad():  # the scoring forward (no state kept for a step) is the same
        served = pooled.clone()
        case.correction().add_to_(served, torch.zeros(0, requires_grad=True))
        torch.testing.assert_close(served, expected, **TOL)

    correction, trained = case.correction(), pooled.clone()
    out = correction.add_to_(trained, torch.zeros(0, requires_grad=True))
    assert out is trained and trained.requires_grad
    torch.testing.assert_close(trained.detach(), expected, **TOL)
    trained.backward(out_grad)
    assert correction.finite is True and all(w[1] for w in want)
    correction.step(case.accum, case.lives, case.controllers, 0.1, 0.01)
    for g, group in enumerate(case.groups):
        rows = case.accum[group.row0 : group.row0 + group.rows]
        got = (group.a, rows, group.b, group.b_m, group.b_v)
        for x, y in zip(got, want[g][2:7], strict=True):
            torch.testing.assert_close(x, y, **TOL)
        for t in range(group.size):
            m = group.member0 + t
            observed = want[g][7][t] if case.lives[m].num_active else torch.zeros(dim, dim)
            grown = case.controllers[m]._grad_gram.full() - grams_before[m]
            torch.testing.assert_close(grown, observed, **TOL)
    assert case.lives[0].b_steps == 2  # no active rows: no B step


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_non_finite_gradient_is_reported_and_changes_nothing(bad):
    gen = torch.Generator().manual_seed(1)
    case = random_case(gen, 2, 16, 8, 1.0, empty_member=False)
    out_grad = torch.randn(16, case.n_features, 8, generator=gen)
    out_grad[5, int(case.features[-1]), 2] = bad
    before = [x.clone() for g in case.groups for x in (g.a, g.b, g.b_m, g.b_v)]
    correction, pooled = case.correction(), torch.zeros(16, case.n_features, 8)
    correction.add_to_(pooled, torch.zeros(0, requires_grad=True))
    pooled.backward(out_grad)
    # the torch path sees it too: B's gradient of the last table is not finite
    g = len(case.groups) - 1
    assert not torch_group(case, g, torch.zeros_like(pooled), out_grad, 0.1, 0.1)[1]
    assert correction.finite is False
    after = [x for g in case.groups for x in (g.a, g.b, g.b_m, g.b_v)]
    for x, y in zip(after, before, strict=True):
        assert torch.equal(x, y)


def test_empty_batch_and_no_active_rows():
    gen = torch.Generator().manual_seed(4)
    case = random_case(gen, 2, 6, 4, 1.0)
    case.hit[:] = False  # nothing active: the deltas are zero, the step changes no row of A
    pooled = torch.randn(6, case.n_features, 4, generator=gen)
    trained = pooled.clone()
    correction = case.correction()
    correction.add_to_(trained, torch.zeros(0, requires_grad=True))
    assert torch.equal(trained.detach(), pooled)
    a_before = [g.a.clone() for g in case.groups]
    trained.backward(torch.randn(6, case.n_features, 4, generator=gen))
    correction.step(case.accum, case.lives, case.controllers, 0.1, 0.01)
    assert all(torch.equal(g.a, a) for g, a in zip(case.groups, a_before, strict=True))


def test_out_of_range_inputs_are_refused():
    gen = torch.Generator().manual_seed(2)
    case = random_case(gen, 2, 3, 4, 1.0)
    anchor, pooled = torch.zeros(0, requires_grad=True), torch.zeros(3, case.n_features, 4)

    def run(**changes):
        for name, value in changes.items():
            setattr(case, name, value)
        with torch.no_grad():
            case.correction().add_to_(pooled, anchor)

    run()
    good = {k: getattr(case, k).clone() for k in ("pos", "index", "offsets", "features")}
    k1 = case.key_bounds[1]
    for name, bad in (
        ("pos", _with(good["pos"], 0, case.groups[0].rows + case.groups[1].rows)),  # past rows
        ("index", _with(good["index"], 0, case.pos.numel())),  # key U of U
        ("features", _with(good["features"], 0, case.n_features)),  # column F of F
        ("offsets", good["offsets"].flip(0)),  # bags out of order
    ):
        if name == "pos":
            case.hit[0] = True
        if name == "index" and bad.numel() == 0:
            continue
        with pytest.raises(IndexError, match="out of range"):
            run(**{name: bad})
        run(**{name: good[name]})
    if case.index.numel() and case.groups[1].size:  # a value of group 0 naming group 1's key
        first = case.index.clone()
        first[0] = k1
        with pytest.raises(IndexError, match="out of range"):
            run(index=first)
    with pytest.raises(TypeError, match="pooled"):
        case.correction().add_to_(torch.zeros(3, case.n_features + 1, 4), anchor)


def _with(t, i, value):
    t = t.clone()
    if t.numel():
        t[i] = value
    return t


def test_a_member_in_no_group_gets_zero_statistics():
    gen = torch.Generator().manual_seed(5)
    case = random_case(gen, 2, 8, 4, 1.0, empty_member=False)
    first = case.groups[0]
    case.groups, case.key_bounds = [first], case.key_bounds[:2]  # the second group left out
    correction, pooled = case.correction(), torch.zeros(8, case.n_features, 4)
    correction.add_to_(pooled, torch.zeros(0, requires_grad=True))
    pooled.backward(torch.randn(8, case.n_features, 4, generator=gen))
    assert correction.grams is not None
    assert not correction.grams[first.size :].any()
    assert correction.grams[: first.size].abs().sum() > 0


@pytest.mark.parametrize("seed", range(6))
def test_all_finite_equals_torchs_check(seed: int) -> None:
    """kernel.all_finite against bool(torch.isfinite(x).all()): NaN, +-inf anywhere (the
    kernel's path), non-contiguous and float64 tensors (torch's), empty ones."""
    gen = torch.Generator().manual_seed(seed)
    n = int(torch.randint(0, 2000, (1,), generator=gen))
    x = torch.randn(n, generator=gen) * 1e30
    cases = [x, x.reshape(-1, 1).t(), x[::2], x.double(), torch.zeros(0)]
    if n:
        for bad in (math.nan, math.inf, -math.inf):
            y = x.clone()
            y[int(torch.randint(0, n, (1,), generator=gen))] = bad
            cases += [y, y.double(), y.flip(0)[::1]]
    for case in cases:
        assert all_finite(case) == bool(torch.isfinite(case).all())
