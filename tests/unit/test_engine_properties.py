"""Random admit / grow / shrink / fold / evict / budget sequences on one table under its
budget: the accounted bytes (measured from the tensors) never pass the budget, a shrink, a fold
or an eviction leaves every served row unchanged, and a growth under a full table happens by
eviction."""

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from torch import nn

from dlrm_core.admission import SightingSketch
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankPolicy, min_budget_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N, D = 300, 8

OPS = st.one_of(
    st.tuples(st.just("admit"), st.lists(st.integers(0, N - 1), min_size=1, max_size=60)),
    st.tuples(st.just("train"), st.floats(0.1, 5.0)),
    st.tuples(st.just("grow"), st.integers(0, 1000)),
    st.tuples(st.just("shrink"), st.integers(1, 3)),
    st.tuples(st.just("evict"), st.lists(st.integers(0, N - 1), min_size=1, max_size=30)),
    st.tuples(st.just("prune"), st.just(0)),
    st.tuples(st.just("budget"), st.integers(0, 6000)),
)


def served(ctl: RankController) -> torch.Tensor:
    """(N, D) every row as served: base + delta."""
    live = ctl.live
    return live.base.weight.detach() + live.get_delta_weight(torch.arange(N))


def outside_span(ctl: RankController, seed: int) -> torch.Tensor:
    q, _ = torch.linalg.qr(ctl.live.B.detach().T)
    v = torch.randn(8, D, generator=torch.Generator().manual_seed(seed))
    return v - (v @ q) @ q.T


def apply(ctl: RankController, op: str, arg, t: float, gen: torch.Generator) -> bool:
    """Run one op; True when it must not change any served row."""
    live = ctl.live
    if op == "admit":
        ctl.admit(torch.tensor(arg), now=t)
        ctl.make_room(torch.tensor(arg[:1]), now=t)
        return False
    if op == "train":  # training moves A
        a = torch.randn(live.num_active, live.rank, generator=gen) * arg
        live.set_factors(a, live.B.detach())
        return False
    if op == "grow":
        before_rank, before_rows = live.rank, live.num_active
        if arg % 2:  # gradients outside span(B)
            ctl.observe_gradient(outside_span(ctl, arg) * 10)
        else:  # isotropic: the energy rule may take several directions at once, or shed one
            ctl.observe_gradient(torch.randn(32, D, generator=gen))
        ctl.adapt(now=t)
        if live.rank < before_rank:
            event("shrink by the energy rule")
        if live.rank > before_rank and before_rows > ctl.max_rows():
            # a growth under a full table: made room by eviction, folded
            assert live.num_active <= ctl.max_rows() < before_rows
            assert ctl.events[-2].kind == "prune" and ctl.events[-2].reason == "grow"
            event("growth under a full table")
        return True
    if op == "shrink":  # a low-rank delta: the controller drops (folds) components
        if live.num_active and live.rank > arg:
            g = torch.randn(live.num_active, arg, generator=gen)
            a = g @ torch.randn(arg, live.rank, generator=gen)
            a += 1e-3 * torch.randn(a.shape, generator=gen)  # a little energy to fold
            live.set_factors(a, live.B.detach())
        unchanged, rank = served(ctl), live.rank
        ctl.adapt(now=t)
        if live.rank < rank and live.num_active:
            event("shrink with rows")
        torch.testing.assert_close(served(ctl), unchanged, atol=1e-5, rtol=0)
        return False  # checked here: its own set_factors changed the rows before
    if op == "evict":
        live.evict(torch.tensor(arg), fold=True)
        return True
    if op == "prune":
        ctl.prune_idle(now=t)
        return True
    floor = min_budget_bytes(ctl.policy, D)
    ctl.set_budget(max(arg, floor), now=t)
    return True


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(OPS, min_size=1, max_size=25),
    budget=st.integers(400, 6000),
    rank=st.integers(1, 6),
    admit_after=st.integers(1, 2),
)
def test_random_sequences_keep_the_budget_and_the_served_rows(ops, budget, rank, admit_after):
    torch.manual_seed(0)
    live = LiveEmbedding(
        nn.EmbeddingBag(N, D, mode="sum", sparse=True), LiveEmbeddingConfig(rank=rank, seed=1)
    )
    policy = RankPolicy(
        r_min=1,
        r_max=D,
        tau=0.99,
        max_age=5.0,
        grow_newest=0.3,
        admit_after=admit_after,
        max_rank_changes_per_hour=3600,
    )
    budget = max(budget, min_budget_bytes(policy, D))
    ctl = RankController(live, "t", policy, budget)
    gen = torch.Generator().manual_seed(budget)
    for _ in range(2):  # a full table to start from (twice: past the gate)
        ctl.admit(torch.randperm(N, generator=gen)[: N // 2], now=0.0)
    ctl.observe_gradient(torch.randn(16, D, generator=gen))
    ctl.adapt(now=0.0)  # the warm start: B from the gradients seen so far
    for step, (op, arg) in enumerate(ops):
        t = float(step)
        before = served(ctl)
        keeps_rows = apply(ctl, op, arg, t, gen)
        if keeps_rows:
            torch.testing.assert_close(served(ctl), before, atol=1e-5, rtol=0)
        if ctl.fold_log_over():  # what the trainer's publish does
            live.take_folded()
        assert ctl.accounted_bytes() <= ctl.budget_bytes, (op, ctl.live.memory())
        assert live.num_active <= ctl.max_rows() and 1 <= live.rank <= D
        # the index finds every active row at its place and nothing else
        pos, hit = live.slots(torch.arange(N))
        assert int(hit.sum()) == live.num_active
        assert torch.equal(pos[live.ids], torch.arange(live.num_active))


def test_the_gate_admits_an_id_on_its_second_sighting():
    live = LiveEmbedding(nn.EmbeddingBag(N, D, mode="sum"), LiveEmbeddingConfig(rank=2))
    ctl = RankController(live, "t", RankPolicy(r_max=4, admit_after=2), 6_000)
    assert ctl.max_rows() < N  # the budget cannot hold every row: ids compete for them
    assert ctl.sketch is not None and ctl.accounted_bytes() <= 6_000
    sightings = 8  # the sketch's since_reset counter
    assert ctl.sketch.nbytes == 2 * (1 << ctl.sketch.width_bits) + sightings <= 6_000 // 16
    assert ctl.admit(torch.tensor([1, 2, 3]), now=0.0) == 0  # first sightings
    assert ctl.admit(torch.tensor([2, 4, 4]), now=1.0) == 2  # 2 again, 4 twice
    assert sorted(live.ids.tolist()) == [2, 4]


def test_a_budget_holding_every_row_has_no_sketch_and_admits_at_once():
    """The gate turns ids away to keep rows for those that return: where the budget holds
    every row of the table (a handful of genders, ages) none is turned away, and the sketch's
    bytes go to the table's rows and rank."""
    tiny = LiveEmbedding(nn.EmbeddingBag(8, D, mode="sum"), LiveEmbeddingConfig(rank=4))
    ctl = RankController(tiny, "t", RankPolicy(r_max=D, admit_after=2), 4_000)
    assert ctl.max_rows() == 8 and ctl.sketch is None
    assert ctl.admit(torch.tensor([1, 2, 3]), now=0.0) == 3  # first sightings: room for all


def test_the_sketch_forgets_and_never_undercounts():
    sketch = SightingSketch(width_bits=10)
    ids = torch.arange(0, 3000, 7)
    first = sketch.sight(ids[:100], torch.ones(100, dtype=torch.int64))
    assert (first >= 1).all()
    again = sketch.sight(ids[:50], torch.full((50,), 2, dtype=torch.int64))
    assert (again >= 3).all()  # count-min: never below the true count
    for i in range(20):  # many other ids: the counters are halved, old counts fade
        sketch.sight(torch.arange(10_000 + 400 * i, 10_400 + 400 * i), torch.ones(400).long())
    later = sketch.sight(ids[:50], torch.ones(50, dtype=torch.int64))
    assert float(later.float().mean()) < 3
