"""Accounting of the update strategies: bytes of known change sets, transfer-time arithmetic,
top-p selection, LiveUpdate's memory under its budget, the benefit-weighted budget split."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import (
    Link,
    SimulatedCluster,
    dense_bytes,
    projection_scale,
    rows_bytes,
    table_bytes,
)
from dlrm_core.experiment.config import LinkConfig, LiveUpdateParams
from dlrm_core.experiment.liveupdate import (
    Hybrid,
    LiveUpdate,
    allocate_budget,
    anchor_bytes,
    min_table_budget,
    table_budgets,
    table_caps,
)
from dlrm_core.experiment.memory import held_tensor_bytes
from dlrm_core.experiment.strategies import DeltaSync, FullSync, PrioritizedDelta
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.rebase import ANCHOR_SHARE
from dlrm_core.trainer import FullStepResult, FullTrainConfig

D = 8


def tiny_model() -> DLRM:
    torch.manual_seed(0)
    cfg = DLRMConfig(("a", "b"), (100, 50), 2, D, (8, D), (8, 1))
    return DLRM(cfg)


def make(strategy_cls, scale=1.0, bandwidth_gbps=8e-6, **kw):  # noqa: ANN001, ANN003, ANN201
    """A strategy over a fresh cluster; 8e-6 Gbps = 1000 bytes/s, so times are easy."""
    base = tiny_model()
    cluster = SimulatedCluster(copy.deepcopy(base), FullTrainConfig(), 0.0, -1)
    link = Link(LinkConfig(bandwidth_gbps=bandwidth_gbps, target_table_bytes=None), scale)
    return strategy_cls(copy.deepcopy(base), cluster, link, 10.0, 0.0, **kw), cluster


def touched(**tables: list[tuple[int, float]]) -> FullStepResult:
    return FullStepResult(
        0.5,
        False,
        {
            name: (torch.tensor([i for i, _ in rows]), torch.tensor([n for _, n in rows]))
            for name, rows in tables.items()
        },
    )


def test_transfer_time_arithmetic() -> None:
    link = Link(LinkConfig(bandwidth_gbps=100.0), scale=2.0)
    # 1e9 table bytes projected x2 plus 5e8 MLP bytes, at 12.5e9 bytes/s
    assert link.transfer_seconds(10**9, 5 * 10**8) == pytest.approx(2.5e9 / 12.5e9)
    cfg = LinkConfig(bandwidth_gbps=100.0, target_table_bytes=200e12)
    assert projection_scale(cfg, 10**6) == pytest.approx(2e8)
    assert projection_scale(LinkConfig(target_table_bytes=None), 10**6) == 1.0
    # 200 TB on 100 GbE: 16,000 s
    assert Link(cfg, 2e8).transfer_seconds(10**6) == pytest.approx(16_000.0)


def test_delta_sync_bytes_and_landing_of_a_known_change_set() -> None:
    strat, cluster = make(DeltaSync)
    strat.observe(touched(a=[(3, 1.0), (7, 2.0)], b=[(1, 1.0)]), 1.0)
    strat.observe(touched(a=[(3, 0.5)]), 2.0)  # a row changed twice is sent once
    with torch.no_grad():
        cluster.model.sparse_arch.table("a").weight[[3, 7]] += 1.0
        cluster.model.sparse_arch.table("b").weight[1] += 1.0
    expected = rows_bytes(3, D) + dense_bytes(cluster.model)
    assert rows_bytes(3, D) == 3 * (8 + 4 * D)
    strat.advance(10.0)  # the sync falls due at t=10 and is sent
    acc = strat.accounting
    assert acc.bytes_moved == expected and acc.syncs_sent == 1
    transfer = expected / 1000.0
    assert acc.transfer_seconds == [pytest.approx(transfer)]
    served = strat.model.sparse_arch.table("a").weight
    assert not torch.equal(served[3], cluster.model.sparse_arch.table("a").weight[3])
    strat.advance(10.0 + transfer * 0.99)
    assert acc.syncs_landed == 0
    strat.advance(10.0 + transfer)
    assert acc.syncs_landed == 1
    for name in ("a", "b"):
        assert torch.equal(
            strat.model.sparse_arch.table(name).weight,
            cluster.model.sparse_arch.table(name).weight,
        )
    # the payload lands in pieces: the node holds one, the largest is its memory overhead
    assert acc.peak_memory_overhead_bytes == rows_bytes(2, D)
    assert acc.peak_measured_bytes == dense_bytes(cluster.model)  # the MLPs' piece
    assert acc.memory_overhead_bytes == 0
    strat.advance(20.0 + 1e-9)  # nothing changed since: only the MLPs travel
    assert acc.bytes_moved == expected + dense_bytes(cluster.model)


def test_full_sync_moves_whole_tables_and_skips_while_the_link_is_busy() -> None:
    strat, cluster = make(FullSync, bandwidth_gbps=4e-6)  # 500 bytes/s
    whole = table_bytes(cluster.model) + dense_bytes(cluster.model)
    assert table_bytes(cluster.model) == 4 * D * 150
    strat.advance(10.0)
    assert strat.accounting.bytes_moved == whole
    transfer = whole / 500.0
    assert transfer > 10.0  # longer than a sync period
    strat.advance(20.0)  # due while the link is busy: skipped
    assert strat.accounting.syncs_skipped_link_busy == 1
    assert strat.accounting.bytes_moved == whole
    assert strat.accounting.peak_memory_overhead_pct == 0.0
    strat.advance(10.0 + transfer)
    assert strat.model.sparse_arch.table("b").weight.equal(
        cluster.model.sparse_arch.table("b").weight
    )
    # it lands a table at a time (each under Payload.pieces' bound): the larger one's share
    assert strat.accounting.peak_memory_overhead_pct == pytest.approx(100.0 * 100 / 150)


@pytest.mark.parametrize("max_bytes", [rows_bytes(4, D), 1 << 16])
def test_a_payload_lands_in_bounded_pieces_that_write_what_the_whole_writes(max_bytes) -> None:  # noqa: ANN001
    cluster = SimulatedCluster(tiny_model(), FullTrainConfig(), 0.0, -1)
    with torch.no_grad():
        for p in cluster.model.parameters():
            p.add_(torch.randn_like(p))
    payload = cluster.snapshot(5.0, {"a": torch.arange(0, 100, 3), "b": None})  # rows, a whole
    pieces = list(payload.pieces(max_bytes))
    assert sum(p.bytes for p in pieces) == payload.bytes
    whole, pieced = tiny_model(), tiny_model()
    payload.apply_to(whole)
    for piece in pieces:
        # bounded (an MLP parameter bigger than a piece comes in parts), each its own copy:
        # freed once applied
        assert piece.bytes <= max_bytes
        held = held_tensor_bytes(piece, set())
        assert held <= 3 * piece.bytes and held < held_tensor_bytes(payload, set())
        piece.apply_to(pieced)
    for (name, p), q in zip(whole.named_parameters(), pieced.parameters(), strict=True):
        assert torch.equal(p, q), name
    assert not torch.equal(
        whole.sparse_arch.table("b").weight, tiny_model().sparse_arch.table("b").weight
    )


@pytest.mark.parametrize("priority", ["magnitude", "freshness_magnitude"])
def test_prioritized_delta_sends_the_top_share_and_keeps_the_rest(priority: str) -> None:
    strat, cluster = make(PrioritizedDelta, top_p_pct=20.0, priority=priority)
    rows = [(i, float(i)) for i in range(1, 11)]  # magnitudes 1..10 on rows 1..10 of "a"
    strat.observe(touched(a=rows), 9.0)
    strat.advance(10.0)
    acc = strat.accounting
    assert acc.bytes_moved == rows_bytes(2, D) + dense_bytes(cluster.model)
    sent = torch.nonzero(strat.magnitude["a"] == 0).squeeze(1).tolist()
    assert {9, 10} <= set(sent)  # the two largest went; rows 1..8 still wait
    assert strat.magnitude["a"][1:9].tolist() == [float(i) for i in range(1, 9)]


def test_freshness_breaks_ties_towards_recent_changes() -> None:
    strat, _ = make(PrioritizedDelta, top_p_pct=50.0, priority="freshness_magnitude")
    strat.observe(touched(a=[(1, 1.0)]), 0.0)
    strat.observe(touched(a=[(2, 1.0)]), 9.0)
    strat.advance(10.0)
    assert strat.magnitude["a"][2] == 0 and strat.magnitude["a"][1] == 1.0


def small_batch(k: int, gen: torch.Generator) -> SparseBatch:
    ids = [[[int(i)] for i in torch.randint(0, 20, (32,), generator=gen)],
           [[int(i)] for i in torch.randint(0, 10, (32,), generator=gen)]]  # fmt: skip
    return SparseBatch.from_ids(
        ("a", "b"), ids, torch.randn(32, 2, generator=gen),
        torch.randint(0, 2, (32,), generator=gen).float(), timestamps=torch.full((32,), float(k)),
        request_ids=torch.arange(32 * k, 32 * k + 32),
    )  # fmt: skip


def test_the_hybrid_counts_the_anchors_it_kept_while_a_rebase_lands() -> None:
    base = tiny_model()
    cluster = SimulatedCluster(copy.deepcopy(base), FullTrainConfig(), 0.0, -1)
    link = Link(LinkConfig(bandwidth_gbps=8e-6, target_table_bytes=None), 1.0)  # 1000 B/s
    params = LiveUpdateParams(budget_pct=20.0, r_max=4, initial_rank=2, prune_age_s=None)
    hybrid = Hybrid(copy.deepcopy(base), params, {"a": 2000, "b": 1000}, 0.0, -1, 0,
                    start_s=0.0, cluster=cluster, link=link, feed_period_s=10.0,
                    piece_bytes=1 << 16, anchor_bytes=10**6)  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    for k in range(9):
        batch = small_batch(k, gen)
        cluster.train(batch, float(k))
        hybrid.on_ready(batch, float(k))
    hybrid.advance(10.0)  # the rebase is sent; no on_ready until it lands
    (lands, payload, anchors), = hybrid.in_flight  # fmt: skip
    assert anchors and sum(int(a.anchor.ids.numel()) for a in anchors.values()) > 0
    kept = held_tensor_bytes(anchors, set())
    assert kept == sum(a.nbytes for a in anchors.values())  # what the anchor says it holds
    # its budgeted memory counts the anchor too (the node's MemoryAccount.rebase_anchor)
    assert hybrid.overhead_bytes() == LiveUpdate.overhead_bytes(hybrid) + kept
    hybrid.advance(lands)
    acc = hybrid.accounting
    assert acc.syncs_landed == 1 and not hybrid.in_flight
    trainer = held_tensor_bytes(hybrid.trainer, hybrid._served)
    # while it landed the node held its trainer, the anchors and a piece (not the payload)
    assert acc.peak_measured_bytes >= trainer + kept
    assert acc.peak_measured_bytes < trainer + kept + payload.bytes


def test_liveupdate_trains_locally_within_its_budget() -> None:
    model = tiny_model()
    params = LiveUpdateParams(budget_pct=20.0, r_max=4, initial_rank=2, prune_age_s=None)
    budgets = {"a": 2000, "b": 1000}
    live = LiveUpdate(model, params, budgets, 0.0, -1, seed=0)
    gen = torch.Generator().manual_seed(1)
    for k in range(20):
        ids = [[[int(i)] for i in torch.randint(0, 100, (32,), generator=gen)],
               [[int(i)] for i in torch.randint(0, 50, (32,), generator=gen)]]  # fmt: skip
        batch = SparseBatch.from_ids(
            ("a", "b"), ids, torch.randn(32, 2, generator=gen),
            torch.randint(0, 2, (32,), generator=gen).float(),
            timestamps=torch.full((32,), float(k)),
            request_ids=torch.arange(32 * k, 32 * k + 32),
        )  # fmt: skip
        live.on_ready(batch, float(k))
    acc = live.accounting
    assert acc.bytes_moved == 0
    assert acc.cpu_seconds > 0
    # the LoRA state within its budgets; the account adds what waits beside the cap (the
    # served batches waiting for labels)
    lora = sum(m.overhead_bytes for m in live.trainer.memory().values())
    assert 0 < lora <= sum(budgets.values())
    assert acc.peak_memory_overhead_bytes >= lora + live.trainer.join.nbytes() > lora
    assert live.learnt_until_id == 32 * 20 - 1 and live.newest_event_s == 19.0
    assert all(1 <= r <= 4 for r in live.ranks().values())


def test_budget_split_follows_benefit_under_caps_and_floor() -> None:
    alloc = allocate_budget(
        1000, {"x": 3.0, "y": 1.0, "z": 0.0}, {"x": 10**6, "y": 10**6, "z": 10**6}, floor=10
    )
    assert alloc == {"x": 750, "y": 250}
    # x can use at most 100: the rest goes to y
    alloc = allocate_budget(1000, {"x": 3.0, "y": 1.0}, {"x": 100, "y": 10**6}, floor=10)
    assert alloc == {"x": 100, "y": 900}
    # y's share (50) is below the floor: y is dropped, x takes all
    alloc = allocate_budget(1000, {"x": 19.0, "y": 1.0}, {"x": 10**6, "y": 10**6}, floor=60)
    assert alloc == {"x": 1000}
    assert allocate_budget(10, {"x": 1.0}, {"x": 10**6}, floor=60) == {}


def test_a_table_uses_no_more_of_the_budget_than_the_rows_its_traffic_touched() -> None:
    """A Criteo feature of three values hashed into 1,024 rows took a 33 KB share for its three
    rows: capped at the rows the head touched, its share goes to the tables whose rows fill
    their budgets."""
    model = tiny_model()
    params = LiveUpdateParams(budget_pct=100.0, r_max=4, initial_rank=2, prune_age_s=None)
    full = table_caps(model, params.r_max)
    seen = table_caps(model, params.r_max, {"a": 30, "b": 10**6})
    assert seen["b"] == full["b"] and seen["a"] < full["a"]
    assert seen["a"] == table_caps(DLRM(DLRMConfig(("a",), (30,), 2, D, (8, D), (8, 1))), 4)["a"]
    by_rows = table_budgets(model, params, {"a": 3.0, "b": 1.0}, head_rows={"a": 30, "b": 50})
    total, floor = int(table_bytes(model) * params.budget_pct / 100.0), min_table_budget(params, D)
    assert by_rows == allocate_budget(total, {"a": 3.0, "b": 1.0}, seen, floor)
    assert by_rows["a"] == seen["a"] < table_budgets(model, params, {"a": 3.0, "b": 1.0})["a"]


def test_table_budgets_split_the_budget_by_measured_benefit_else_evenly() -> None:
    model = tiny_model()
    params = LiveUpdateParams(budget_pct=100.0, r_max=4, initial_rank=2, prune_age_s=None)
    total = int(table_bytes(model) * params.budget_pct / 100.0)
    caps, floor = table_caps(model, params.r_max), min_table_budget(params, D)
    even = table_budgets(model, dataclasses.replace(params, allocation="even"), {"a": 3.0, "b": 1})
    assert even == allocate_budget(total, {"a": 1.0, "b": 1.0}, caps, floor) and len(even) == 2
    # Nothing measured yet: even shares, not no table at all.
    assert table_budgets(model, params, {"a": 0.0, "b": 0.0}) == even
    by_benefit = table_budgets(model, params, {"a": 3.0, "b": 1.0})
    assert by_benefit == allocate_budget(total, {"a": 3.0, "b": 1.0}, caps, floor) != even
    with pytest.raises(ValueError, match="cannot hold a single table's factors"):
        table_budgets(model, dataclasses.replace(params, budget_pct=0.01), {"a": 1.0, "b": 1.0})
    # a hybrid's anchor share is reserved from the same budget (dlrm_core.rebase.ANCHOR_SHARE)
    anchor = anchor_bytes(model, params)
    hybrid = table_budgets(model, params, {"a": 3.0, "b": 1.0}, reserved=anchor)
    assert 0 < anchor == int(total * ANCHOR_SHARE)
    assert hybrid == allocate_budget(total - anchor, {"a": 3.0, "b": 1.0}, caps, floor)


def test_liveupdate_clamps_r_max_to_d_and_the_initial_rank_into_its_bounds() -> None:
    params = LiveUpdateParams(r_max=64, initial_rank=64, prune_age_s=None)
    live = LiveUpdate(tiny_model(), params, {"a": 20000}, 0.0, -1, seed=0)
    ctl = live.trainer.controllers["a"]
    assert ctl.policy.r_max == D and live.ranks()["a"] == D
    live = LiveUpdate(tiny_model(), dataclasses.replace(params, r_max=2), {"a": 20000}, 0.0, -1,
                      seed=0)  # fmt: skip
    assert live.ranks()["a"] == 2
    with pytest.raises(ValueError, match="r_min <= r_max"):
        LiveUpdateParams(r_min=5, r_max=4)
