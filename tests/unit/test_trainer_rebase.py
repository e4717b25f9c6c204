"""The node trainer's side of a delta rebase with its carry (nodeworker.trainer_rebase): after
the cluster's announce, a refreshed row gets the cluster's row plus what the trainer learnt
about it since (served now - served at the announce); without the announce, with another one
or after its anchor expired, the rows overwrite and their corrections are dropped. The anchor
is bounded by the budget's anchor share and held only until its rows land or it expires."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pytest
import torch

from controlplane.commands import demo
from dlrm_core.model import DLRMConfig
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.rebase import ANCHOR_SHARE, ID_BYTES, served_rows
from nodeworker.base_pages import PrivateBasePages
from nodeworker.node_budget import NodeBudget, node_budget, node_table_floor
from nodeworker.node_service import open_source
from nodeworker.protocol import DEFAULT_POLICY
from nodeworker.shared_memory import map_base_tables, table_path, write_base_tables
from nodeworker.trainer_messages import AnnounceSnapshot, RebaseRows
from nodeworker.trainer_rebase import ANCHOR_TTL_S, TrainerRebase
from nodeworker.tuned_top import TopTuning
from tests.unit.test_node_memory_cap import node_trainer
from tests.unit.test_trainer import CFG, Stream

pytestmark = pytest.mark.usefixtures("one_torch_thread")

D = CFG.embedding_dim
BUDGETS = {"user": 12_000, "item": 12_000}


@pytest.fixture
def node(tmp_path):
    """A trainer on a copy-on-write mapping of its base files (as the node's), trained a while,
    and its TrainerRebase with room to anchor every corrected row."""
    trainer = node_trainer(RankPolicy(tau=0.9, r_min=1, r_max=4), BUDGETS)
    write_base_tables(trainer.model, tmp_path)
    map_base_tables(trainer.model, tmp_path, shared=False)
    pages = {}
    for name, live in trainer.lives.items():
        n, d = live.num_rows, live.dim
        shared = torch.from_file(str(table_path(tmp_path, name)), True, n * d).view(n, d)
        pages[name] = PrivateBasePages(live.base.weight, shared)
    rebase = TrainerRebase(trainer, pages, TopTuning(trainer))
    rebase.limit(budget(anchor=10**7), rebase_period_s=30.0)
    stream = Stream(seed=3)
    now = time.time()
    for step in range(40):
        trainer.train_step(stream.batch(48), now - 100 + step)
    return trainer, rebase, stream


def budget(anchor: int) -> NodeBudget:
    return NodeBudget(2.0, 0, 0, dict(BUDGETS), dict(BUDGETS), anchor=anchor)


def served(trainer, ids: torch.Tensor) -> torch.Tensor:
    return served_rows(trainer.model.sparse_arch.table("user"), ids)


def learn(trainer, stream, now: float, steps: int = 15) -> None:
    for step in range(steps):
        trainer.train_step(stream.batch(48), now + step * 1e-3)


def rebase_of(ids: torch.Tensor, rows: torch.Tensor, snapshot: int | None) -> RebaseRows:
    return RebaseRows(2, {"user": (ids.numpy(), rows.numpy())}, {}, snapshot)


def test_a_refreshed_row_gets_the_clusters_row_plus_the_change_since_the_announce(node):
    trainer, rebase, stream = node
    live = trainer.lives["user"]
    now = time.time()
    active = torch.sort(live.ids).values
    announced = rebase.announce(AnnounceSnapshot(1, 7, now), now)
    assert announced.rows["user"] == active.numel() >= 4  # room for all: all anchored
    items = trainer.lives["item"].num_active
    rows = items + active.numel()
    expected = ID_BYTES * rows + (ID_BYTES + 4 * D) * rows
    assert announced.nbytes == rebase.nbytes == expected  # ids held, anchored rows
    then = served(trainer, active[:4])
    learn(trainer, stream, now)  # the trainer learns while the rows travel
    rest = torch.tensor([i for i in range(live.num_rows) if i not in set(active.tolist())])
    never = rest[~torch.isin(rest, live.ids)]
    newly = rest[torch.isin(rest, live.ids)]
    if not newly.numel():  # a row pruned and one admitted since the announce
        live.evict(active[-1:], fold=True)
        newly = never[-1:]
        live.activate(newly, now + 1, max_active=live.capacity)
    pos, hit = live.slots(newly[:1])
    assert bool(hit.all())
    with torch.no_grad():  # it learnt something
        live.A[pos] += 0.5
    ids = torch.cat([active[:4], newly[:1], never[:1]])  # corrected at the announce or not
    then = torch.cat([then, live.base.weight[ids[4:]].detach()])
    change = served(trainer, ids) - then
    assert change[:4].abs().sum() > 0 and change[4].abs().sum() > 0
    assert torch.equal(change[5], torch.zeros(D))  # never corrected: nothing to carry
    cluster = torch.randn(ids.numel(), D)

    done = rebase.apply(rebase_of(ids, cluster, 7), now + 2)

    assert done.carry == "carried" and rebase.nbytes == 0  # the anchor went with its rows
    torch.testing.assert_close(served(trainer, ids), cluster + change, rtol=0, atol=1e-6)
    assert not bool(torch.isin(ids, live.ids).any())  # their corrections dropped
    carried_ids, carried_rows = done.carried["user"]
    assert sorted(carried_ids.tolist()) == sorted(ids[:5].tolist())  # row 6 is the cluster's
    written = live.base.weight.detach()[torch.from_numpy(carried_ids)]
    assert torch.equal(torch.from_numpy(carried_rows), written)  # what inference writes too
    assert done.dropped["user"] == 5


def test_unannounced_other_or_expired_snapshots_overwrite_and_drop(node):
    trainer, rebase, stream = node
    live = trainer.lives["user"]
    now = time.time()
    ids = torch.sort(live.ids).values[:3]
    cluster = torch.randn(3, D)
    done = rebase.apply(rebase_of(ids, cluster, None), now)
    assert done.carry == "no snapshot announced" and done.carried == {}
    assert torch.equal(served(trainer, ids), cluster)

    ids = torch.sort(live.ids).values[:3]
    rebase.announce(AnnounceSnapshot(3, 8, now), now)
    learn(trainer, stream, now)
    done = rebase.apply(rebase_of(ids, cluster, 5), now)  # an older snapshot's rows
    assert done.carry == "snapshot 8 announced since" and torch.equal(served(trainer, ids), cluster)
    assert rebase.pending is not None and rebase.pending.snapshot == 8  # its rows still come

    rebase.expire(now + ANCHOR_TTL_S - 1)  # two periods of 30 s: not yet
    assert rebase.pending is not None
    rebase.expire(now + 2 * 30.0 + 1)
    assert rebase.pending is None and rebase.nbytes == 0
    ids = torch.sort(live.ids).values[:3]
    done = rebase.apply(rebase_of(ids, cluster, 8), now + 61)
    assert done.carry == "its anchor expired" and torch.equal(served(trainer, ids), cluster)


def test_the_anchor_holds_the_most_recently_used_rows_its_share_holds(node):
    """The selection itself (dlrm_core.rebase.recent_anchor) is tested in test_rebase.py."""
    trainer, rebase, stream = node
    live = trainer.lives["user"]
    now = time.time()
    learn(trainer, stream, now - 10, steps=3)
    n = live.num_active
    rebase.caps["user"] = ID_BYTES * n + 3 * (ID_BYTES + 4 * D) + 5  # three rows
    announced = rebase.announce(AnnounceSnapshot(4, 9, now), now)
    anchor = rebase.pending.anchors["user"].anchor
    assert announced.rows["user"] == anchor.ids.numel() == 3
    cold = live.ids[torch.argsort(live.ages(now))[-1:]]  # corrected then, not anchored
    ids = torch.cat([anchor.ids, cold])
    cluster = torch.randn(ids.numel(), D)
    learn(trainer, stream, now)
    done = rebase.apply(rebase_of(ids, cluster, 9), now)
    assert done.carry == "carried"
    assert torch.equal(served(trainer, cold), cluster[-1:])  # overwritten, its correction gone

    rebase.caps["user"] = ID_BYTES * live.num_active - 1  # not even its ids: no anchor at all
    rebase.announce(AnnounceSnapshot(5, 10, now), now)
    assert "user" not in rebase.pending.anchors


def test_the_budget_reserves_the_anchor_share_only_with_a_rebase_period():
    hybrid = replace(DEFAULT_POLICY, rebase_period_s=1800.0)
    config = replace(CFG, table_sizes=(10**6, 10**5))
    without, with_ = node_budget(config, DEFAULT_POLICY), node_budget(config, hybrid)
    assert without.anchor == 0 and with_.anchor == int(with_.total * ANCHOR_SHARE) > 0
    assert sum(with_.tables.values()) < sum(without.tables.values())
    assert sum(with_.shares.values()) <= with_.total


def test_a_rebase_period_never_stops_a_table_of_a_small_node_from_training():
    """A node of 20k and 10k rows and two small context tables (1000, 50 rows) at 2%: its
    rebase policy once reserved the anchor's share first, leaving ctx_0 no floor, and the node
    refused its own policy. The anchor takes what the floors leave, up to its share: here 2%
    of these 1.99 MB holds the four tables' floors and leaves the anchor less than its share."""
    spec = "synthetic:user_rows=20000,item_rows=10000"
    config = DLRMConfig.from_schema(open_source(spec, 0, 0)[1])
    hybrid = replace(DEFAULT_POLICY, rebase_period_s=1800.0)
    without, with_ = node_budget(config, DEFAULT_POLICY), node_budget(config, hybrid)
    assert set(with_.tables) == set(without.tables) == set(config.feature_names)
    assert not with_.untrained and not without.untrained
    assert 0 < with_.anchor < int(with_.total * ANCHOR_SHARE)  # the floors' leftover
    assert sum(with_.shares.values()) <= with_.total
    floor = node_table_floor(config, hybrid)
    assert all(b >= floor for b in with_.tables.values())


def test_the_demo_node_trains_every_table_and_holds_its_full_anchor():
    """The demo's edge-live (200k, 100k rows, 19 MB at 2%) with its 30-min rebase period: every
    table gets a budget above its floor, and the anchor its whole share."""
    spec = demo._replay_spec(argparse.Namespace(data=None, format=None, drift=1.0))
    config = DLRMConfig.from_schema(open_source(spec, 0, 0)[1])
    hybrid = replace(DEFAULT_POLICY, rebase_period_s=1800.0)
    budget = node_budget(config, hybrid)
    assert set(budget.tables) == set(config.feature_names) and not budget.untrained
    assert budget.anchor == int(budget.total * ANCHOR_SHARE)
    floor = node_table_floor(config, hybrid)
    assert all(b >= floor for b in budget.tables.values())
