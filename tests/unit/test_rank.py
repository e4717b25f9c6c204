import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig, overhead_bytes
from dlrm_core.rank import RankController, RankPolicy, min_budget_bytes

# Tiny tensors: one torch thread avoids OpenMP stalls on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


N, D = 200, 8
BIG = 10**9


def make(rank=4, budget=BIG, seed=0, **policy) -> RankController:
    torch.manual_seed(seed)
    live = LiveEmbedding(
        nn.EmbeddingBag(N, D, mode="sum", sparse=True), LiveEmbeddingConfig(rank=rank, seed=seed)
    )
    return RankController(live, "user", RankPolicy(**{"r_max": 8, **policy}), budget)


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
    torch.testing.assert_close(ctl.spectrum()[:2], torch.linalg.svdvals(before)[:2])
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


def test_grow_when_the_newest_component_is_strong():
    ctl = make(rank=2, grow_newest=0.3)
    g = torch.Generator().manual_seed(3)
    with_factors(ctl, torch.linalg.qr(torch.randn(20, 2, generator=g))[0])  # equal energies
    before = delta(ctl)
    assert ctl.adapt(now=2.0) == 3
    torch.testing.assert_close(delta(ctl), before, atol=1e-5, rtol=1e-4)
    assert ctl.events[-1].reason == "grow:newest"


def test_grow_along_the_gradient_residual_outside_span_b():
    ctl = make(rank=2, grow_newest=1.0, tau=1.0)
    with_factors(ctl, torch.zeros(10, 2), torch.eye(D)[:2])
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
    assert float(torch.trace(ctl._grad_gram)) > 0 and 0.0 <= ctl.residual_share() <= 1.0


def test_growth_is_refused_when_it_would_break_the_budget():
    budget = overhead_bytes(20, 2, D)
    ctl = make(rank=2, budget=budget, grow_newest=0.3)
    with_factors(ctl, torch.linalg.qr(torch.randn(20, 2))[0])
    assert ctl.adapt(now=0.0) == 2
    assert ctl.overhead_bytes <= budget


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
    budget = overhead_bytes(3, 2, D)
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
    assert ctl.events[-1].reason == "lru" and ctl.overhead_bytes <= budget


def test_shrinking_the_budget_evicts_then_lowers_rank():
    ctl = make(rank=4)
    ctl.admit(torch.arange(50), now=0.0)
    ctl.set_budget(overhead_bytes(10, 4, D), now=1.0)
    assert ctl.live.num_active == 10 and ctl.overhead_bytes <= ctl.budget_bytes
    ctl.set_budget(overhead_bytes(0, 2, D), now=2.0)
    assert ctl.live.rank == 2 and ctl.live.num_active == 0
    with pytest.raises(ValueError, match="below the 96 bytes"):
        ctl.set_budget(min_budget_bytes(ctl.policy, D) - 1, now=3.0)


def test_initial_rank_is_clamped_into_the_policy():
    ctl = make(rank=6, r_max=3)
    assert ctl.live.rank == 3 and ctl.events[-1].reason == "clamp"


OPS = st.one_of(
    st.tuples(st.just("admit"), st.lists(st.integers(0, N - 1), min_size=1, max_size=40)),
    st.tuples(st.just("adapt"), st.floats(0.0, 3.0)),
    st.tuples(st.just("grow"), st.integers(0, D - 1)),
    st.tuples(st.just("prune"), st.just(0)),
    st.tuples(st.just("budget"), st.integers(0, 60)),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=1, max_size=25),
    budget_rows=st.integers(0, 60),
    rank=st.integers(1, 6),
)
def test_memory_overhead_never_exceeds_the_budget(ops, budget_rows, rank):
    budget = overhead_bytes(budget_rows, 3, D)
    ctl = make(rank=rank, budget=budget, r_min=1, r_max=6, max_age=5.0, grow_newest=0.2)
    gen = torch.Generator().manual_seed(budget_rows)
    for t, (op, arg) in enumerate(ops):
        if op == "admit":
            ctl.admit(torch.tensor(arg), now=float(t))
            ctl.make_room(torch.tensor(arg[:1]), now=float(t))
            # training moves A: random factors make the spectrum (and growth) vary
            ctl.live.set_factors(
                torch.randn(ctl.live.num_active, ctl.live.rank, generator=gen) * (1 + arg[0]),
                ctl.live.B.detach(),
            )
        elif op == "adapt":
            ctl.adapt(now=float(t) + arg)
        elif op == "grow":  # gradients far outside span(B) push the rank up
            ctl.observe_gradient(torch.eye(D)[arg].repeat(8, 1) * 10)
            ctl.adapt(now=float(t))
        elif op == "prune":
            ctl.prune_idle(now=float(t))
        else:
            ctl.set_budget(max(overhead_bytes(arg, 2, D), min_budget_bytes(ctl.policy, D)), t)
        report = ctl.live.memory()
        assert report.overhead_bytes <= ctl.budget_bytes
        assert report.overhead_bytes == overhead_bytes(ctl.live.num_active, ctl.live.rank, D)
        assert 1 <= ctl.live.rank <= 6
        assert torch.equal(ctl.live.ids, torch.unique(ctl.live.ids))
