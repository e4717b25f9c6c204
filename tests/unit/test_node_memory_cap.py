"""A node's budget caps its whole proportional part: the trainer's own state and the node's
copies outside it (one shared-memory arena per slot for all tables' serving layouts, which
inference serves in place), measured from the slot file's allocated blocks and the
tensors; the budget is one pool for all the node's tables, so small tables train too."""

import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.model import DLRMConfig
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.row_budget import NODE_PAGE_FLOOR, capacity_plan, floor_bytes, node_copy_bytes
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import TableFactors
from dlrm_core.trainer import LiveTrainer, TrainerConfig
from nodeworker import protocol
from nodeworker.node_budget import MIN_TABLE_ROWS, capacity_budget, node_budget, plan_node_budget
from nodeworker.sample_cache import Feedback
from nodeworker.shared_memory import SharedFactors, TableCapacity
from tests.unit.test_feed import feed_pair, serve
from tests.unit.test_trainer import CFG, ITEMS, Stream, pretrained

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def node_trainer(policy: RankPolicy, budgets: dict[str, int]) -> LiveTrainer:
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
    return LiveTrainer(model, config, budgets=budgets)


def publish(trainer: LiveTrainer, shared: SharedFactors, version: int) -> torch.Tensor:
    """What the node's trainer does at a publish (nodeworker/trainer_proc.py); the ids of
    item rows folded since the last one."""
    folded = {name: live.take_folded() for name, live in trainer.lives.items()}
    tables = {name: live.factors() for name, live in trainer.lives.items()}
    serving = ServingDelta.from_factors(version, CFG.feature_names, CFG.table_sizes, tables)
    shared.installed(shared.version)  # inference installed the last one, as within a poll
    shared.write(version, float(version), tables, serving)
    return folded["item"]


def node_total(trainer: LiveTrainer, shared: SharedFactors) -> int:
    """The node's accounted proportional bytes: the trainer's and its copies outside it."""
    return trainer.memory_account().total + sum(shared.held_bytes().values())


def capacities(budgets: dict[str, int], r_max: int) -> dict[str, TableCapacity]:
    return {
        name: TableCapacity.for_budget(budget, CFG.embedding_dim, r_max)
        for name, budget in budgets.items()
    }


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 1000),
    admit_after=st.integers(1, 2),
    user_budget=st.integers(5_000, 9_000),
    publish_every=st.integers(1, 4),
    sizes=st.lists(st.integers(8, 96), min_size=60, max_size=90),
)
def test_the_accounted_total_with_the_node_copies_never_exceeds_the_budget(
    seed, admit_after, user_budget, publish_every, sizes
):
    """Random admit / grow / shrink / fold / evict sequences (a stream of random batch sizes
    on tables far smaller than their traffic): the node's accounted total, slots and installed
    copy included, stays within the tables' budgets and the node's page floor."""
    torch.manual_seed(seed)
    policy = RankPolicy(r_min=1, r_max=8, admit_after=admit_after)
    budgets = {"user": user_budget, "item": 5_000}
    trainer = node_trainer(policy, budgets)
    stream, evicted = Stream(seed), 0
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), capacities(budgets, policy.r_max), create=True)
        for step, size in enumerate(sizes, start=1):
            trainer.train_step(stream.batch(size), float(step))
            if step % publish_every == 0:
                publish(trainer, shared, step)
            assert node_total(trainer, shared) <= sum(budgets.values()) + NODE_PAGE_FLOOR, step
            evicted += sum(e.kind == "prune" for e in trainer.drain_events())
    assert evicted > 0  # the tables were full: the cap bound, not the stream's size


def test_a_replay_that_folds_every_row_of_a_small_table_keeps_a_flat_account():
    """Rows idle past max_age are folded into the base: a long replay folds every item row
    many times over, and the node's account at its end is no larger than at its start."""
    torch.manual_seed(0)
    policy = RankPolicy(r_min=1, r_max=4, max_age=3.0, fold_evicted=True)
    budgets = {"user": 6_000, "item": 5_000}
    trainer = node_trainer(policy, budgets)
    stream, folded, totals = Stream(0), set(), []
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), capacities(budgets, policy.r_max), create=True)
        for step in range(1, 601):
            trainer.train_step(stream.batch(48), float(step))
            if step % 2 == 0:
                folded.update(publish(trainer, shared, step).tolist())
                totals.append(node_total(trainer, shared))
    assert folded == set(range(ITEMS))  # every row of the small table was folded
    # The account moves by tens of bytes with which rows are active (the index, the serving
    # layouts' runs); a record kept per fold would grow by 8 bytes for each of the ~2,000
    # folds.
    third = len(totals) // 3
    assert max(totals[-third:]) <= max(totals[:third]) + sum(budgets.values()) // 100
    assert max(totals) <= sum(budgets.values()) + NODE_PAGE_FLOOR


def test_a_slot_gives_back_the_pages_a_smaller_version_does_not_use():
    caps = {"user": TableCapacity(rows=20_000, a_floats=20_000 * 4, rank=4, dim=8)}
    names, rows = ("user",), (1_000_000,)
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), caps, create=True)
        held = []
        for version, n in enumerate((20_000, 20_000, 100, 100), start=1):
            tables = {"user": _factors(torch.randperm(1_000_000)[:n].sort().values, rank=4, dim=8)}
            serving = ServingDelta.from_factors(version, names, rows, tables)
            shared.installed(shared.version)  # as inference does within a poll
            shared.write(version, 0.0, tables, serving)
            held.append(shared.held_bytes()["user"])
        # two big versions fill both slots; two small ones give their pages back
        assert held[1] >= node_copy_bytes(20_000, 4, 8, 4) // 2
        assert held[3] <= node_copy_bytes(100, 4, 8, 4) + NODE_PAGE_FLOOR
        assert held[3] < held[1] // 50


def test_tables_share_one_slot_arena_so_the_page_floor_is_paid_once_per_node():
    """Eight tables of ten rows each: their versions take two slot pages and a serving
    layout's bytes, not a page or more per table."""
    names = tuple(f"t{i}" for i in range(8))
    caps = {name: TableCapacity(rows=64, a_floats=64 * 4, rank=4, dim=8) for name in names}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), caps, create=True)
        tables = {name: _factors(torch.arange(10) * (i + 1), rank=4, dim=8)
                  for i, name in enumerate(names)}  # fmt: skip
        for version in (1, 2):  # both slots
            serving = ServingDelta.from_factors(version, names, (1000,) * 8, tables)
            shared.installed(shared.version)  # as inference does within a poll
            shared.write(version, 0.0, tables, serving)
        held = sum(shared.held_bytes().values())
        assert held <= 8 * node_copy_bytes(10, 4, 8, 4) + NODE_PAGE_FLOOR
        assert held < 8 * 4096
        copy = shared.read_serving()
        assert copy is not None and copy.version == 2
        (group,) = copy.delta.groups  # one rank: one group of the eight tables
        keys = torch.arange(10, dtype=torch.int32) * 3 + 2 * 1000  # t2's ids, its key offset
        assert bool((group.index.rows(keys) > 0).all())


DEMO_DIM = 16
DEMO_FLOOR = floor_bytes(4, DEMO_DIM, 4)  # r_min 4, int32 keys


def test_the_node_budget_is_one_pool_small_tables_train_and_the_shares_are_the_cap():
    """The demo's edge-live tables (20k and 10k rows) both train; a 5k-row table next to a
    10^6-row one trains too; the shares add up to the policy's 2% of all tables."""
    for sizes in (
        {"user": (20_000, DEMO_DIM), "item": (10_000, DEMO_DIM)},
        {"big": (1_000_000, DEMO_DIM), "small": (5_000, DEMO_DIM)},
    ):
        budget = plan_node_budget(sizes, 2.0, DEMO_FLOOR)
        all_bytes = sum(rows * dim * 4 for rows, dim in sizes.values())
        assert budget.total == int(all_bytes * 0.02)
        assert set(budget.tables) == set(sizes) and not budget.untrained
        assert all(b >= DEMO_FLOOR for b in budget.tables.values())
        assert sum(budget.shares.values()) <= budget.total
        assert sum(budget.tables.values()) + budget.backlog + NODE_PAGE_FLOOR <= budget.total


def test_a_node_too_small_for_one_table_floor_says_why_and_trains_nothing():
    budget = plan_node_budget({"user": (1_000, DEMO_DIM), "item": (100, DEMO_DIM)}, 2.0,
                              DEMO_FLOOR)  # fmt: skip
    assert budget.tables == {} and set(budget.untrained) == {"user", "item"}
    assert "page floor" in budget.untrained["user"] and "1408 bytes" in budget.untrained["user"]


def test_a_pool_that_holds_only_the_largest_tables_leaves_the_smallest_out():
    sizes = {"big": (13_000, DEMO_DIM), "small": (300, DEMO_DIM)}
    budget = plan_node_budget(sizes, 2.0, DEMO_FLOOR)
    assert set(budget.tables) == {"big"} and set(budget.untrained) == {"small"}
    assert "1 larger table(s)" in budget.untrained["small"]
    # a trainer that started with the small table alone keeps to it; the pool it may use is
    # still the node's, but no more than the table's shared slot holds
    only = plan_node_budget(sizes, 2.0, DEMO_FLOOR, among=("small",))
    assert set(only.tables) == {"small"} and "since the trainer started" in only.untrained["big"]
    assert only.tables["small"] == capacity_budget(300 * DEMO_DIM * 4, DEMO_FLOOR)


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


def test_a_table_with_a_slot_its_trainer_does_not_train_is_published_empty():
    """A trainer restarted at a smaller budget may train fewer tables than have slots."""
    caps = {name: TableCapacity(rows=64, a_floats=64 * 4, rank=4, dim=8) for name in ("a", "b")}
    with tempfile.TemporaryDirectory(dir="/dev/shm") as tmp:
        shared = SharedFactors(Path(tmp), caps, create=True)
        tables = {"b": _factors(torch.arange(5), rank=4, dim=8)}
        shared.write(1, 0.0, tables, ServingDelta.from_factors(1, ("a", "b"), (100, 100), tables))
        read = shared.read_serving()
        assert read is not None
        (group,) = read.delta.groups
        assert group.features == (1,) and torch.equal(group.a[1:], tables["b"].a)
        assert shared.held_bytes()["a"] == 0


def test_a_table_is_trained_only_with_room_for_a_few_rows():
    """A floor that holds no row would take budget to train nothing: at 5% of the integration
    tests' node (0.45 MB of tables) only its two largest tables train, with room for rows."""
    config = DLRMConfig(("user", "item", "c0", "c1"), (5000, 2000, 50, 10), 4, 16, (16, 16),
                        (16, 1))  # fmt: skip
    policy, _ = protocol.validate_policy({"memory_budget_pct": 5.0})
    budget = node_budget(config, policy)
    assert set(budget.tables) == {"user", "item"} and set(budget.untrained) == {"c0", "c1"}
    for name, size in (("user", 5000), ("item", 2000)):
        rows = capacity_plan(budget.tables[name], policy.r_min, 16, False, size, 4)[0]
        assert rows >= MIN_TABLE_ROWS
    policy, _ = protocol.validate_policy({"memory_budget_pct": 10.0})
    assert set(node_budget(config, policy).tables) == {"user", "item", "c0", "c1"}


def test_the_join_is_in_the_account_as_the_bytes_of_its_arenas(tmp_path):
    """Feed.nbytes (what the trainer's account adds as pending) is the sample cache's arenas
    (records, value arenas, ready queue) and the backlog: it follows the waiting rows up and,
    once they are labelled, taken and the arena squeezed, down again."""
    clock, writer, feed = feed_pair(tmp_path, window=60.0, max_pending=10_000)
    feed.poll(now=0.0)
    assert feed.nbytes() == feed.cache._ready.nbytes == 2048  # nothing served: no arena
    for first in range(0, 800, 8):  # the writer's ledger holds 1,000 ids
        serve(writer, first, 8, at=clock.now)
        if first % 80 == 0:
            feed.poll(now=clock.now)
    feed.poll(now=clock.now)
    rows = feed.cache._rows
    assert rows is not None and feed.cache.sizes()["pending"] == 800
    arenas = rows.records.nbytes + sum(v.nbytes for v in rows.values)
    assert feed.cache.nbytes() == arenas + feed.cache._ready.nbytes
    assert feed.nbytes() == feed.cache.nbytes() + feed.backlog_nbytes()
    assert 800 * rows.dtype.itemsize <= arenas <= 2 * 800 * (rows.dtype.itemsize + 24)
    waiting = feed.nbytes()
    clock.now = 1.0
    for rid in range(800):
        assert writer.feedback(rid, 1.0) is Feedback.JOINED
        if rid % 100 == 99:  # the label ring holds 128
            feed.poll(now=1.0)
    while feed.next_batch() is not None:
        pass
    serve(writer, 800, 8, at=1.0)  # an append finds the arena idle: squeezed
    feed.poll(now=1.0)
    assert feed.cache.sizes()["held"] == 8 and feed.nbytes() < waiting / 3
    assert feed.cache._rows.capacity == 256  # the smallest arena again
