"""A node trainer's budget caps the whole proportional part: its own state and the node's copies
outside it (the shared-memory double buffer of factors and serving layouts, inference's installed
layout), measured from the slot files' allocated blocks and the tensors."""

import tempfile
from pathlib import Path

import pytest
import torch

from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.row_budget import node_copy_bytes
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import TableFactors
from dlrm_core.trainer import LiveTrainer, TrainerConfig
from nodeworker.shared_memory import SharedFactors, TableCapacity
from tests.unit.test_feed import feed_pair, serve
from tests.unit.test_trainer import CFG, Stream, pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BUDGETS = {"user": 60_000, "item": 56_000}  # a few dozen rows of the 120 users and 40 items


def node_trainer(policy: RankPolicy) -> LiveTrainer:
    model, _ = pretrained(steps=20)
    config = TrainerConfig(
        live=LiveEmbeddingConfig(rank=2),
        policy=policy,
        lr_a=0.3,
        lr_b=0.01,
        adapt_every=3,
        room_every=1,
        publish_every=10**9,
        in_process_join=False,
        node_key_bytes=4,
    )
    return LiveTrainer(model, config, budgets=BUDGETS)


def publish(trainer: LiveTrainer, shared: SharedFactors, version: int) -> None:
    """What the node's trainer does at a publish (nodeworker/trainer_proc.py)."""
    for live in trainer.lives.values():
        live.take_folded()
    tables = {name: live.factors() for name, live in trainer.lives.items()}
    serving = ServingDelta.from_factors(version, CFG.feature_names, CFG.table_sizes, tables)
    shared.write(version, float(version), tables, serving)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_accounted_total_with_the_node_copies_never_exceeds_the_budget(seed):
    torch.manual_seed(seed)
    policy = RankPolicy(r_min=1, r_max=8, admit_after=1 + seed % 2)
    trainer = node_trainer(policy)
    caps = {
        name: TableCapacity.for_budget(budget, CFG.embedding_dim, policy.r_max)
        for name, budget in BUDGETS.items()
    }
    stream, evicted, copies = Stream(seed), 0, 0
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), caps, create=True)
        for step in range(1, 150):
            trainer.train_step(stream.batch(32 + 16 * (step % 5)), float(step))
            if step % 3 == 0:
                publish(trainer, shared, step)
            account = trainer.memory_account()
            held = shared.held_bytes()
            for name, table in account.tables.items():
                assert table.total + held[name] <= table.budget, (step, name, table, held)
                copies = max(copies, held[name])
            evicted += sum(e.kind == "prune" for e in trainer.drain_events())
    assert evicted > 0  # the tables were full: the cap bound, not the stream's size
    assert copies > 0


def test_a_slot_gives_back_the_pages_a_smaller_version_does_not_use():
    caps = {"user": TableCapacity(rows=20_000, a_floats=20_000 * 4, rank=4, dim=8)}
    names, rows = ("user",), (1_000_000,)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), caps, create=True)
        held = []
        for version, n in enumerate((20_000, 20_000, 100, 100), start=1):
            tables = {"user": _factors(torch.randperm(1_000_000)[:n].sort().values, rank=4, dim=8)}
            serving = ServingDelta.from_factors(version, names, rows, tables)
            shared.write(version, 0.0, tables, serving)
            held.append(shared.held_bytes()["user"])
        # two big versions fill both slots; two small ones give their pages back
        assert held[1] >= node_copy_bytes(20_000, 4, 8, 4) // 2
        assert held[3] <= node_copy_bytes(100, 4, 8, 4)
        assert held[3] < held[1] // 50


def _factors(ids: torch.Tensor, rank: int, dim: int) -> TableFactors:
    return TableFactors(ids, torch.randn(len(ids), rank), torch.randn(rank, dim), 1.0)


def test_the_feed_backlog_stays_within_its_bytes_and_drops_the_oldest(tmp_path):
    clock, writer, feed = feed_pair(tmp_path, window=60.0, backlog_bytes=1)
    for first in range(0, 24, 4):  # six joined batches of 4 rows, none taken by a trainer
        serve(writer, first, 4, at=float(first))
        clock.now = float(first) + 0.5
        for rid in range(first, first + 4):
            writer.feedback(rid, 1.0)
        feed.poll(now=clock.now)
        assert len(feed.backlog) == 1  # one batch is always kept: the trainer's next one
    assert [b.request_ids.tolist() for b, _ in feed.backlog] == [[20, 21, 22, 23]]
    assert feed.report().dropped_backlog == 20
