import math

import pytest
import torch
from torch import nn

from dlrm_core.factor_spectrum import factor_svd
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.rank import FOLD_TOLERANCE, RankController
from dlrm_core.rank_policy import RankPolicy, min_budget_bytes
from dlrm_core.row_budget import floor_bytes, row_bytes

# Tiny tensors: one torch thread avoids OpenMP stalls on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


N, D = 200, 8
BIG = 10**9


def make(rank=4, budget=BIG, seed=0, **policy) -> RankController:
    torch.manual_seed(seed)
    live = LiveEmbedding(
        nn.EmbeddingBag(N, D, mode="sum", sparse=True), LiveEmbeddingConfig(rank=rank, seed=seed)
    )
    return RankController(
        live, "user", RankPolicy(**{"r_max": 8, "admit_after": 1, **policy}), budget
    )


def budget_for_rows(rows: int, rank: int) -> int:
    """The smallest budget that holds ``rows`` active rows at ``rank`` (index of 2 buckets)."""
    return floor_bytes(rank, D) + math.ceil(rows * (row_bytes(rank) + 2))


def delta(ctl: RankController) -> torch.Tensor:
    """(n, D) delta of the active rows, formed densely for checking only."""
    return ctl.live.get_delta_weight(ctl.live.ids)


def with_factors(ctl: RankController, a: torch.Tensor, b: torch.Tensor | None = None) -> None:
    ctl.live.activate(torch.arange(a.shape[0]) * 3, now=0.0, max_active=BIG)
    ctl.live.set_factors(a, ctl.live.B.detach() if b is None else b)


def test_spectrum_matches_dense_svd_and_low_rank_delta_shrinks_losslessly():
    ctl = make(rank=4, tau=0.999)
    g = torch.Generator().manual_seed(1)
    a = torch.randn(30, 2, generator=g) @ torch.randn(2, 4, generator=g)  # true rank 2
    with_factors(ctl, a, torch.randn(4, D, generator=g))
    before = delta(ctl)
    torch.testing.assert_close(
        factor_svd(ctl.live.A.detach(), ctl.live.B.detach())[1][:2],
        torch.linalg.svdvals(before)[:2],
    )
    assert ctl.adapt(now=5.0) == 2
    assert ctl.live.A.shape == (30, 2) and ctl.live.B.shape == (2, D)
    torch.testing.assert_close(delta(ctl), before, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ctl.live.B @ ctl.live.B.T, torch.eye(2), atol=1e-5, rtol=0)
    (event,) = ctl.events
    assert (event.kind, event.from_value, event.to_value, event.reason) == ("rank", 4, 2, "energy")
    assert event.timestamp == 5.0 and event.table == "user"


def test_truncation_error_is_the_dropped_energy():
    ctl = make(rank=4, tau=0.6, grow_newest=1.0)
    g = torch.Generator().manual_seed(2)
    scales = torch.tensor([4.0, 3.0, 0.5, 0.1])
    with_factors(ctl, torch.linalg.qr(torch.randn(40, 4, generator=g))[0] * scales)
    before = delta(ctl)
    s = torch.linalg.svdvals(before)
    k = ctl.adapt(now=1.0)
    assert k == 1  # 16 / 26.26 >= 0.6
    err = torch.linalg.matrix_norm(delta(ctl) - before)
    assert float(err) == pytest.approx(float(s[k:].pow(2).sum().sqrt()), rel=1e-4)


def test_a_shrink_folds_only_the_rows_whose_truncated_part_passes_the_tolerance():
    """Rows 0-9 live in the kept directions but for a part far below FOLD_TOLERANCE: neither
    their base rows nor the fold log change. Rows 10-19 (all in the dropped directions) and
    rows 20-29 (dropped part 10x the tolerance) are folded, so no served row moves."""
    ctl = make(rank=4, tau=0.95, grow_newest=1.0)
    a = torch.zeros(30, 4)
    a[:10, :2] = torch.tensor([[1.0, 0.5], [-0.5, 1.0]]).repeat(5, 1)
    a[:10, 2:] = 1e-3 * FOLD_TOLERANCE
    a[10:20, 2:] = torch.tensor([[0.1, -0.05]])
    a[20:, 2] = 10 * FOLD_TOLERANCE
    with_factors(ctl, a, torch.eye(D)[:4])
    ids = ctl.live.ids.clone()
    base_before = ctl.live.base.weight.detach()[ids].clone()
    served_before = base_before + delta(ctl)
    assert ctl.adapt(now=1.0) == 2
    base_after = ctl.live.base.weight.detach()[ids]
    assert torch.equal(base_after[:10], base_before[:10])  # not folded
    assert not torch.equal(base_after[10:20], base_before[10:20])
    assert not torch.equal(base_after[20:], base_before[20:])
    assert ctl.live.take_folded().tolist() == ids[10:].tolist()
    moved = (base_after + delta(ctl) - served_before).norm(dim=1)
    assert float(moved[:10].max()) <= FOLD_TOLERANCE
    assert float(moved[10:].max()) <= 1e-5  # folded: float rounding only


def test_grow_when_the_newest_component_is_strong():
    ctl = make(rank=2, grow_newest=0.3)
    g = torch.Generator().manual_seed(3)
    with_factors(ctl, torch.linalg.qr(torch.randn(20, 2, generator=g))[0])  # equal energies
    before = delta(ctl)
    assert ctl.adapt(now=2.0) == 3
    torch.testing.assert_close(delta(ctl), before, atol=1e-5, rtol=1e-4)
    assert ctl.events[-1].reason == "grow:newest"


def test_b_starts_from_the_gradient_gram_and_the_served_rows_stay():
    ctl = make(rank=4, grow_newest=1.0)
    g = torch.Generator().manual_seed(4)
    with_factors(ctl, torch.randn(10, 4, generator=g))
    served = ctl.live.base.weight[ctl.live.ids] + delta(ctl)
    grads = torch.zeros(16, D)
    grads[:8, 3], grads[8:, 6] = 2.0, 1.0  # the gradients live in span(e3, e6)
    ctl.observe_gradient(grads + 0.01 * torch.randn(16, D, generator=g))
    assert ctl.adapt(now=1.0) == 2  # two directions carry tau of the warm-up's energy
    basis = ctl.live.B.detach()
    assert float((basis[:, [3, 6]] ** 2).sum()) > 1.99  # B spans e3, e6
    torch.testing.assert_close(ctl.live.base.weight[ctl.live.ids] + delta(ctl), served)
    assert (ctl.events[-1].from_value, ctl.events[-1].to_value) == (4, 2)
    assert ctl.events[-1].reason == "warm:gram"


def test_the_start_rank_grows_to_the_warm_up_gradient_spread_within_the_rows():
    g = torch.Generator().manual_seed(5)
    grads = torch.randn(64, D, generator=g) * torch.tensor([3.0, 3, 3, 3, 3, 3, 0.01, 0.01])
    ctl = make(rank=2)
    with_factors(ctl, torch.randn(10, 2, generator=g))
    served = ctl.live.base.weight[ctl.live.ids] + delta(ctl)
    ctl.observe_gradient(grads)
    assert ctl.adapt(now=1.0) == 6  # six directions carry the energy
    torch.testing.assert_close(ctl.live.base.weight[ctl.live.ids] + delta(ctl), served)
    # a budget that holds the 10 active rows only up to rank 3 caps the start there
    tight = make(rank=2, budget=budget_for_rows(10, 3))
    with_factors(tight, torch.randn(10, 2, generator=g))
    tight.observe_gradient(grads)
    assert tight.adapt(now=1.0) == 3
    assert tight.live.num_active == 10 and tight.accounted_bytes() <= tight.budget_bytes


def test_grow_along_the_gradient_residual_outside_span_b():
    ctl = make(rank=2, grow_newest=1.0, tau=1.0)
    with_factors(ctl, torch.zeros(10, 2), torch.eye(D)[:2])
    ctl._warm = True  # B is given here, not learnt from a warm-up
    outside = torch.zeros(16, D)
    outside[:, 5] = 1.0
    ctl.observe_gradient(outside)
    ctl.observe_gradient(torch.eye(D)[:2].repeat(2, 1) * 0.1)
    assert ctl.residual_share() > 0.9
    assert ctl.adapt(now=3.0) == 3
    assert ctl.events[-1].reason == "grow:residual"
    assert abs(float(ctl.live.B.detach()[2, 5])) == pytest.approx(1.0, abs=1e-5)
    assert ctl.residual_share() == 0.0  # statistics restart after adapt


def test_observer_sees_training_gradients():
    ctl = make(rank=2)
    ctl.admit(torch.tensor([1, 2, 3]), now=0.0)
    out = ctl.live(torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2]))
    (out * torch.randn(3, D)).sum().backward()
    assert ctl._grad_gram.trace() > 0 and 0.0 <= ctl.residual_share() <= 1.0


def full_table(budget_rows: int = 12, **policy) -> RankController:
    """Rank 2 at room for ``budget_rows`` rows, full: ids 0-5 used at t=0, 6-11 at t=10; B
    given (no warm start), so the gradients observed next lie outside span(B)."""
    ctl = make(rank=2, budget=budget_for_rows(budget_rows, 2), grow_newest=1.0, tau=1.0, **policy)
    ctl._warm = True
    assert ctl.admit(torch.arange(6), now=0.0) == 6
    assert ctl.admit(torch.arange(6, budget_rows), now=10.0) == budget_rows - 6
    assert ctl.live.num_active == ctl.max_rows() == budget_rows
    ctl._last_adapt = 5.0  # rows 6-11 were touched since the last adaptation, 0-5 not
    return ctl


def test_growth_under_a_full_table_evicts_the_coldest_rows_folded():
    ctl = full_table()
    served = ctl.live.base.weight[torch.arange(12)] + ctl.live.get_delta_weight(torch.arange(12))
    ctl.observe_gradient(torch.eye(D)[5].repeat(8, 1))  # all energy outside span(B)
    assert ctl.adapt(now=10.0) == 3
    assert ctl.live.num_active == ctl.max_rows(3) < 12
    assert set(ctl.live.ids.tolist()) >= set(range(6, 12))  # the cold ones left
    prune, grow = ctl.events[-2:]
    assert (prune.kind, prune.reason, prune.from_value) == ("prune", "grow", 12)
    assert (grow.kind, grow.from_value, grow.to_value) == ("rank", 2, 3)
    now = ctl.live.base.weight[torch.arange(12)] + ctl.live.get_delta_weight(torch.arange(12))
    torch.testing.assert_close(now, served, atol=1e-5, rtol=0)
    assert ctl.accounted_bytes() <= ctl.budget_bytes


def test_growth_is_refused_with_its_reason_when_rows_are_worth_more():
    ctl = full_table()
    isotropic = torch.eye(D)[2:].repeat(4, 1)  # residual spread evenly over 6 directions
    ctl.observe_gradient(isotropic)
    ctl.observe_gradient(torch.eye(D)[:2].repeat(40, 1))  # most energy inside span(B)
    ctl._last_adapt = -1.0  # every row was touched since: evicting 2 of 12 costs 1/6 of it
    ctl.policy = RankPolicy(r_max=8, admit_after=1, grow_residual=0.1, grow_newest=1.0, tau=1.0)
    assert ctl.adapt(now=11.0) == 2
    event = ctl.events[-1]
    assert (event.kind, event.from_value, event.to_value) == ("rank", 2, 2)
    assert event.reason == "refused:budget:rows capture more"
    assert ctl.live.num_active == 12


def test_growth_is_refused_when_rows_are_too_fresh_and_refusals_coalesce():
    ctl = full_table(lru_min_age=100.0, refusal_report_s=60.0)
    for t in (10.0, 20.0, 30.0, 75.0):
        ctl.observe_gradient(torch.eye(D)[5].repeat(8, 1))
        assert ctl.adapt(now=t) == 2
    reasons = [e.reason for e in ctl.events if e.kind == "rank"]
    assert reasons == [
        "refused:budget:rows too fresh",
        "refused:budget:rows too fresh x3",
        "refused:budget:rows too fresh",
    ]


def outside_span(ctl: RankController, seed: int) -> torch.Tensor:
    """(8, D) gradients all outside span(B)."""
    q, _ = torch.linalg.qr(ctl.live.B.detach().T)
    v = torch.randn(8, D, generator=torch.Generator().manual_seed(seed))
    return v - (v @ q) @ q.T


def test_rank_changes_at_most_max_per_hour():
    ctl = make(rank=2, max_rank_changes_per_hour=3, grow_newest=1.0, tau=1.0, refusal_report_s=600)
    ctl._warm = True
    ranks = []
    for t in range(8):
        ctl.observe_gradient(outside_span(ctl, t))
        ranks.append(ctl.adapt(now=60.0 * t))
    assert ranks == [3, 4, 5, 5, 5, 5, 5, 5]
    refused = [e for e in ctl.events if e.from_value == e.to_value]
    assert [e.reason for e in refused] == ["refused:hysteresis"]  # the repeats coalesce
    ctl.observe_gradient(outside_span(ctl, 9))
    assert ctl.adapt(now=3601.0) == 6  # an hour after the first change


def test_idle_rows_are_pruned_and_folded():
    ctl = make(rank=2, max_age=10.0)
    ctl.admit(torch.tensor([1, 2, 3]), now=0.0)
    ctl.admit(torch.tensor([3, 4]), now=8.0)
    ctl.live.set_factors(torch.randn(4, 2), ctl.live.B.detach())
    values, offsets = torch.tensor([1, 2, 3, 4]), torch.tensor([0, 1, 2, 3])
    served = ctl.live(values, offsets).detach()
    assert ctl.prune_idle(now=15.0) == 2
    assert ctl.live.ids.tolist() == [3, 4]
    torch.testing.assert_close(ctl.live(values, offsets).detach(), served)
    assert ctl.events[-1].kind == "prune" and ctl.events[-1].reason == "age"
    assert (ctl.events[-1].from_value, ctl.events[-1].to_value) == (4, 2)


def test_discard_policy_drops_the_delta():
    ctl = make(rank=2, max_age=1.0, fold_evicted=False)
    ctl.admit(torch.tensor([7]), now=0.0)
    ctl.live.set_factors(torch.ones(1, 2), ctl.live.B.detach())
    base_row = ctl.live.base.weight[7].clone()
    ctl.prune_idle(now=5.0)
    torch.testing.assert_close(ctl.live(torch.tensor([7]), torch.tensor([0]))[0], base_row)


def test_full_budget_evicts_least_recently_used_but_not_rows_in_the_batch():
    budget = budget_for_rows(3, 2)
    ctl = make(rank=2, budget=budget)
    assert ctl.max_rows() == 3
    ctl.admit(torch.tensor([10]), now=0.0)
    ctl.admit(torch.tensor([11]), now=1.0)
    ctl.admit(torch.tensor([12]), now=2.0)
    batch = torch.tensor([10, 13, 14])
    assert ctl.admit(batch, now=3.0) == 0  # full: nothing evicted yet
    assert ctl.make_room(batch, now=3.0) == 2  # evicts 11, 12; keeps 10 (in the batch)
    assert ctl.live.ids.tolist() == [10]
    assert ctl.admit(batch, now=4.0) == 2
    assert ctl.live.ids.tolist() == [10, 13, 14]
    assert ctl.events[-1].reason == "lru" and ctl.accounted_bytes() <= budget


def test_shrinking_the_budget_evicts_then_lowers_rank():
    ctl = make(rank=4)
    ctl.admit(torch.arange(50), now=0.0)
    ctl.set_budget(budget_for_rows(10, 4), now=1.0)
    ctl.live.take_folded()  # what a publish does
    assert ctl.live.num_active == 10 and ctl.accounted_bytes() <= ctl.budget_bytes
    ctl.set_budget(floor_bytes(2, D), now=2.0)
    assert ctl.live.rank == 2 and ctl.live.num_active == 0
    with pytest.raises(ValueError, match="below the 504 bytes"):
        ctl.set_budget(min_budget_bytes(ctl.policy, D) - 1, now=3.0)


def test_initial_rank_is_clamped_into_the_policy():
    ctl = make(rank=6, r_max=3)
    assert ctl.live.rank == 3 and ctl.events[-1].reason == "clamp"


def full_of_rows(budget: int, **policy) -> tuple[RankController, int]:
    """Rank 2, full at ``budget``: the first half of the rows used at t=0, the rest at t=10,
    the last adaptation at t=5 (so only the second half was touched since)."""
    ctl = make(rank=2, budget=budget, grow_newest=1.0, tau=1.0, **policy)
    ctl._warm = True
    cap = ctl.max_rows()
    ctl.admit(torch.arange(cap // 2), now=0.0)
    ctl.admit(torch.arange(cap // 2, cap), now=10.0)
    assert ctl.live.num_active == cap
    ctl._last_adapt = 5.0
    return ctl, cap


def served_rows(ctl: RankController) -> torch.Tensor:
    return ctl.live.base.weight.detach() + ctl.live.get_delta_weight(torch.arange(N))


def test_a_full_table_trades_cold_rows_for_rank_in_one_change_up_to_full_rank():
    ctl, cap = full_of_rows(6000, r_max=D)
    ctl.live.set_factors(torch.randn(cap, 2), ctl.live.B.detach())
    before = served_rows(ctl)
    ctl.observe_gradient(torch.randn(400, D, generator=torch.Generator().manual_seed(3)))
    rank = ctl.adapt(now=10.0)
    assert rank > 3  # isotropic gradients, cold rows: many directions at once
    grown = [e for e in ctl.events if e.kind == "rank"]
    assert [(e.from_value, e.to_value, e.reason) for e in grown] == [(2, rank, "grow:energy")]
    prune = next(e for e in ctl.events if e.kind == "prune")
    assert prune.reason == "grow" and prune.from_value == cap > prune.to_value
    evicted = cap - ctl.live.num_active
    kept, cold = set(ctl.live.ids.tolist()), set(range(cap // 2))
    assert kept >= set(range(cap // 2, cap)) if evicted <= len(cold) else not kept & cold
    assert ctl.live.num_active <= ctl.max_rows() and ctl.accounted_bytes() <= ctl.budget_bytes
    torch.testing.assert_close(served_rows(ctl), before, atol=1e-5, rtol=0)


def test_full_rank_is_reached_when_it_captures_more_and_held_there():
    ctl, _ = full_of_rows(6000, r_max=D, max_rank_changes_per_hour=6)
    gen = torch.Generator().manual_seed(4)
    ranks = []
    for t in range(1, 9):
        ctl.observe_gradient(torch.randn(400, D, generator=gen))
        ctl.live.last_used[: ctl.live.num_active // 2] = -1e4  # half the rows stay cold
        ranks.append(ctl.adapt(now=10.0 + t))
        ctl.live.take_folded()  # what a publish does
    assert ranks[-1] == D and ranks == sorted(ranks)  # never back down: the cold rows pay


def test_a_full_table_sheds_a_weak_direction_for_rows_that_see_gradients():
    ctl, cap = full_of_rows(6000)
    ctl._last_adapt = -1.0  # every row touched since the last adaptation
    b = ctl.live.B.detach()
    ctl.live.set_factors(torch.randn(cap, 2) * torch.tensor([1.0, 0.01]), b)
    before = served_rows(ctl)
    ctl.observe_gradient(b[0].repeat(50, 1))  # all of it along the strong direction
    assert ctl.adapt(now=11.0) == 1
    assert ctl.events[-1].reason == "shrink:energy" and ctl.max_rows(1) > cap
    torch.testing.assert_close(served_rows(ctl), before, atol=1e-5, rtol=0)


def test_a_change_must_win_by_the_margin():
    ctl, cap = full_of_rows(6000, switch_margin=1.0)
    ctl.observe_gradient(torch.randn(400, D, generator=torch.Generator().manual_seed(5)))
    assert ctl.adapt(now=10.0) == 2 and ctl.live.num_active == cap
