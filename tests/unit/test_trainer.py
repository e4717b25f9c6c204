import copy
import math
import threading
import time

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.memory import held_tensor_bytes, model_storages
from dlrm_core.factor_store import FactorStore
from dlrm_core.live_embedding import LiveEmbeddingConfig, attach_live_embeddings
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.table_factors import TableFactors
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig, LiveTrainer, TrainerConfig

# Tiny tensors: one torch thread avoids OpenMP stalls on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


USERS, ITEMS = 120, 40
CFG = DLRMConfig(("user", "item"), (USERS, ITEMS), 2, 8, (16, 8), (16, 1))


class Stream:
    """Clicks driven by a per-user taste for the item's group; tastes flip at ``drift_at``."""

    def __init__(self, seed=0, drift_at=math.inf):
        self.gen = torch.Generator().manual_seed(seed)
        self.taste = torch.randint(0, 2, (USERS,), generator=self.gen)
        self.drift_at = drift_at
        self.t = 0.0
        self.rid = 0

    def batch(self, size=64):
        users = torch.randint(0, USERS, (size,), generator=self.gen)
        items = torch.randint(0, ITEMS, (size,), generator=self.gen)
        taste = self.taste[users] if self.t < self.drift_at else 1 - self.taste[users]
        p = torch.where(taste == 1, 0.85, 0.1)
        labels = (torch.rand(size, generator=self.gen) < p).float()
        ts = torch.full((size,), self.t, dtype=torch.float64)
        rids = torch.arange(self.rid, self.rid + size)
        self.t += 1.0
        self.rid += size
        return SparseBatch(
            ("user", "item"),
            (users, items),
            (torch.arange(size), torch.arange(size)),
            torch.randn(size, 2, generator=self.gen),
            labels,
            ts,
            rids,
        )


def pretrained(steps=150, seed=0):
    torch.manual_seed(seed)
    model = DLRM(CFG)
    full = FullSparseTrainer(model, FullTrainConfig("adagrad", lr_dense=0.05, lr_sparse=0.1))
    stream = Stream(seed)
    for _ in range(steps):
        full.step(stream.batch())
    return model, stream


def trainer_config(**kw):
    base = dict(
        live=LiveEmbeddingConfig(rank=2),
        policy=RankPolicy(r_min=1, r_max=4),
        budget_fraction=0.5,
        lr_a=0.3,
        lr_b=0.01,
        reuse=0,
        adapt_every=10,
        publish_every=5,
    )
    base.update(kw)
    return TrainerConfig(**base)


def bce(model, batch):
    with torch.no_grad():
        return float(F.binary_cross_entropy_with_logits(model(batch), batch.labels))


def test_full_sparse_sgd_learns_and_reports_touched_rows():
    torch.manual_seed(0)
    model = DLRM(CFG)
    stream = Stream(1)
    held = [stream.batch(256) for _ in range(3)]
    before = sum(bce(model, b) for b in held)
    full = FullSparseTrainer(model, FullTrainConfig("adagrad", lr_dense=0.05, lr_sparse=0.1))
    for _ in range(150):
        result = full.step(stream.batch())
    assert sum(bce(model, b) for b in held) < before - 0.3
    ids, norms = result.touched["user"]
    assert ids.numel() > 0 and norms.shape == ids.shape and bool((norms >= 0).all())


def test_live_trainer_adapts_to_drift_better_than_the_stale_model():
    model, _ = pretrained()
    stale = copy.deepcopy(model)
    stream = Stream(seed=0, drift_at=0.0)  # every taste flipped from the first batch
    trainer = LiveTrainer(model, trainer_config())
    for _ in range(120):
        trainer.process(stream.batch())
    held = [stream.batch(256) for _ in range(4)]
    live_loss = sum(bce(model, b) for b in held) / 4
    stale_loss = sum(bce(stale, b) for b in held) / 4
    assert live_loss < stale_loss - 0.1, (live_loss, stale_loss)
    assert trainer.stats.steps == 120 and trainer.stats.skipped == 0
    for name, report in trainer.memory().items():
        assert report.overhead_bytes <= trainer.controllers[name].budget_bytes
    # only the factors trained: the MLPs are frozen
    assert all(not p.requires_grad for p in model.dense_parameters())


def test_scores_come_before_learning_and_labels_wait_for_the_delay():
    model, stream = pretrained(steps=20)
    trainer = LiveTrainer(model, trainer_config(label_delay=3.0))
    first = stream.batch()
    expected = trainer.score(first)
    torch.testing.assert_close(trainer.process(first), expected)
    assert trainer.stats.steps == 0  # label not due yet
    for _ in range(3):
        trainer.process(stream.batch())
    assert trainer.stats.steps == 1 and trainer.join.pending_rows == 3 * 64
    assert not torch.equal(trainer.score(first), expected)  # it learnt from the first batch


def test_missing_labels_become_negatives_after_the_timeout():
    model, stream = pretrained(steps=5)
    trainer = LiveTrainer(model, trainer_config(label_delay=0.0, label_timeout=5.0))
    b = stream.batch()
    trainer.serve(b.with_labels(torch.full((64,), math.nan)), now=0.0)
    trainer.feedback(b.request_ids[:10], torch.ones(10), now=1.0)
    assert [r.samples for r in trainer.train_ready(1.0)] == [10]
    assert [r.samples for r in trainer.train_ready(5.0)] == [54]
    assert trainer.join.counts.timed_out == 54


def test_replay_is_bounded():
    model, stream = pretrained(steps=5)
    trainer = LiveTrainer(model, trainer_config(reuse=2, replay_window=3))
    for _ in range(10):
        trainer.process(stream.batch())
    # every fresh batch after the first brings one replay step; no batch replays > 2 times
    assert trainer.stats.replay_steps == 9
    assert all(uses <= 2 for _, uses in trainer._replay)


def test_without_reuse_no_batch_is_kept_for_replay():
    model, stream = pretrained(steps=5)
    trainer = LiveTrainer(model, trainer_config(reuse=0, replay_window=3))
    for _ in range(10):
        trainer.process(stream.batch())
    assert trainer.stats.replay_steps == 0
    assert not trainer._replay  # the window would hold 3 batches never trained on again
    assert trainer.memory_account().pending == trainer.join.nbytes()


def factors_of(trainer):
    return {
        n: (lv.ids.clone(), lv.A.detach().clone(), lv.B.detach().clone())
        for n, lv in trainer.lives.items()
    }


def assert_same_factors(a, b):
    for name in a:
        for x, y in zip(a[name], b[name], strict=True):
            assert torch.equal(x, y)


def test_non_finite_batches_are_skipped_and_leave_factors_unchanged():
    model, stream = pretrained(steps=5)
    trainer = LiveTrainer(model, trainer_config(publish_every=1000))
    for _ in range(3):
        trainer.process(stream.batch())
    before = factors_of(trainer)

    bad = stream.batch()
    dense = bad.dense.clone()
    dense[3, 1] = math.nan
    poisoned = SparseBatch(
        bad.keys, bad.values, bad.offsets, dense, bad.labels, bad.timestamps, bad.request_ids
    )
    assert trainer.train_step(poisoned, now=10.0).skipped == "non-finite input"
    assert_same_factors(before, factors_of(trainer))

    def poison_gradient(module, inputs, out):  # the loss stays finite, the gradients do not
        out.register_hook(lambda g: torch.full_like(g, math.nan))

    handle = model.inter_arch.register_forward_hook(poison_gradient)
    result = trainer.train_step(stream.batch(), now=11.0)
    handle.remove()
    assert result.skipped == "non-finite gradient"
    assert_same_factors(before, factors_of(trainer))
    assert trainer.stats.skipped == 2
    assert trainer.stats.skip_reasons == {"non-finite input": 1, "non-finite gradient": 1}
    assert trainer.train_step(stream.batch(), now=12.0).skipped is None


def test_published_version_serves_the_same_model_on_the_inference_side():
    model, stream = pretrained(steps=30)
    inference = copy.deepcopy(model)
    # tiny budget for users so pruning folds rows into the trainer's base copy
    trainer = LiveTrainer(
        model,
        trainer_config(publish_every=7, keep_published=True),
        budgets={"user": 2000, "item": 4000},
    )
    for _ in range(40):
        trainer.process(stream.batch())
    assert any(e.kind == "prune" for e in trainer.drain_events())
    version = trainer.publish()
    # nobody took a version yet: this one carries every fold since the start
    assert version.base_patches["user"].ids.numel() > 0
    account = trainer.memory_account()
    assert account.tables["user"].published == trainer.store.nbytes("user") > 0
    lives = attach_live_embeddings(
        inference.sparse_arch, ["user", "item"], LiveEmbeddingConfig(rank=2)
    )
    latest = trainer.store.latest()
    assert latest is version
    for name, live in lives.items():  # the base rows the version folded, then its factors
        patch = latest.base_patches[name]
        with torch.no_grad():
            live.base.weight[patch.ids] = patch.rows
        live.load_factors(latest.tables[name])
    probe = stream.batch(128)
    with torch.no_grad():
        torch.testing.assert_close(inference(probe), model(probe), atol=1e-5, rtol=1e-5)
    assert trainer.drain_events() == []  # drained


def test_readers_never_see_a_torn_version():
    store = FactorStore()
    stop = threading.Event()
    torn = []

    def make(v: int) -> TableFactors:
        return TableFactors(
            torch.full((50,), v, dtype=torch.int64),
            torch.full((50, 4), float(v)),
            torch.full((4, 8), float(v)),
            1.0,
        )

    def writer():
        v = 0
        while not stop.is_set():
            v += 1
            store.publish({"a": make(v), "b": make(v)}, {}, created_at=float(v))

    thread = threading.Thread(target=writer)
    thread.start()
    seen = set()
    deadline = time.monotonic() + 1.0
    try:
        while time.monotonic() < deadline:
            version = store.latest()
            if version is None:
                continue
            v = version.version
            seen.add(v)
            for f in version.tables.values():
                if not (
                    int(f.ids[0]) == v
                    and float(f.a[-1, -1]) == v
                    and float(f.b[0, 0]) == v
                    and version.created_at == v
                ):
                    torn.append(v)
    finally:
        stop.set()
        thread.join()
    assert not torn and len(seen) > 10


def test_tiny_tables_are_left_unwrapped():
    model = DLRM(DLRMConfig(("user", "flag"), (2000, 2), 1, 8, (8,), (4, 1)))
    trainer = LiveTrainer(model, trainer_config(budget_fraction=0.02))
    assert trainer.skipped_tables == ["flag"] and list(trainer.lives) == ["user"]
    with pytest.raises(ValueError, match="budget_fraction"):
        TrainerConfig(budget_fraction=0.0)


def test_every_table_stays_within_its_budget_by_the_measured_account():
    model, stream = pretrained(steps=20)
    budgets = {"user": 2500, "item": 4000}
    trainer = LiveTrainer(
        model,
        trainer_config(publish_every=3, keep_published=True, adapt_every=4, room_every=1),
        budgets=budgets,
    )
    full = 0
    for _ in range(60):
        trainer.process(stream.batch())
        trainer.store.latest()  # a reader that takes every version
        account = trainer.memory_account()
        for name, table in account.tables.items():
            assert table.budget == budgets[name]
            assert table.total <= table.budget, (name, table)
            # what the controller holds, walked (test_memory_walk), Gram included
            ctl = trainer.controllers[name]
            assert table.total - table.published == ctl.accounted_bytes(), (name, table)
        full += sum(e.reason == "lru" for e in trainer.drain_events())
        assert account.pending > 0  # the replay window
    assert full > 0  # the budgets were reached: evictions, folds and patches were accounted
    assert account.tables["user"].published > 0 and account.tables["user"].sketch > 0


def test_a_trainer_whose_caller_joins_holds_no_join_and_no_store():
    """A node's trainer (nodeworker.trainer_proc) joins in its sample cache and publishes into
    shared memory: its LiveTrainer builds neither a LabelJoin nor a FactorStore."""
    model, stream = pretrained(steps=5)
    trainer = LiveTrainer(model, trainer_config(publish_every=2, in_process_join=False))
    for _ in range(6):
        assert trainer.train_step(stream.batch(), time.time()).skipped is None
    assert trainer.stats.steps == 6 and trainer.publish().tables  # versions still come out
    account = trainer.memory_account()
    assert all(t.published == 0 for t in account.tables.values()) and account.pending == 0
    with pytest.raises(RuntimeError, match="no label join"):
        trainer.serve(stream.batch())
    with pytest.raises(RuntimeError, match="no factor store"):
        trainer.store.latest()
    with pytest.raises(ValueError, match="keep_published"):
        trainer_config(keep_published=True, in_process_join=False)


def test_a_trainer_whose_caller_publishes_keeps_every_fold_for_it():
    """The node's trainer (in_process_join=False) publishes itself: train_step never drains a
    full fold log into a version nobody reads; the caller publishes when fold_log_over says so,
    and every base row a fold changed reaches it."""
    model, stream = pretrained(steps=20)
    tables = model.sparse_arch
    original = {name: tables.table(name).weight.detach().clone() for name in CFG.feature_names}
    budgets = {"user": 1200, "item": 1500}  # a few rows each: LRU folds all the time
    trainer = LiveTrainer(
        model,
        trainer_config(publish_every=10**9, in_process_join=False, room_every=1, adapt_every=4),
        budgets=budgets,
    )
    sent: dict[str, set[int]] = {name: set() for name in trainer.lives}
    overflows = 0
    for i in range(80):
        trainer.train_step(stream.batch(), float(i))
        if trainer.fold_log_over():  # what the node's loop does: publish, sending the folds
            overflows += 1
            for name, live in trainer.lives.items():
                sent[name].update(live.take_folded().tolist())
    for name, live in trainer.lives.items():
        sent[name].update(live.take_folded().tolist())
        changed = (live.base.weight.detach() != original[name]).any(1).nonzero().squeeze(1)
        assert changed.numel() > 0 and set(changed.tolist()) <= sent[name], name
    assert overflows > 0


def test_top_layer_tuning_trains_only_the_last_layer_and_is_accounted():
    model, stream = pretrained(steps=20)
    last = model.over_arch.mlp[-1]
    frozen = [p.detach().clone() for p in model.dense_arch.parameters()]
    first_top = model.over_arch.mlp[0].weight.detach().clone()
    before = last.weight.detach().clone()
    trainer = LiveTrainer(model, trainer_config(lr_top=0.01))
    for _ in range(5):
        trainer.process(stream.batch())
    assert not torch.equal(last.weight, before)
    assert torch.equal(model.over_arch.mlp[0].weight, first_top)
    bottom = model.dense_arch.parameters()
    assert all(torch.equal(p, q) for p, q in zip(bottom, frozen, strict=True))
    # weight (1, 16) and bias (1,): their gradients and Adagrad's sums (2 x 17 floats) and
    # Adagrad's two step counters (float32 scalars)
    account = trainer.memory_account()
    assert account.dense == 2 * 17 * 4 + 2 * 4
    assert account.total == sum(t.total for t in account.tables.values()) + account.pending + 144

    def poison_gradient(module, inputs, out):
        out.register_hook(lambda g: torch.full_like(g, math.nan))

    tuned = last.weight.detach().clone()
    handle = model.inter_arch.register_forward_hook(poison_gradient)
    assert trainer.train_step(stream.batch(), now=100.0).skipped == "non-finite gradient"
    handle.remove()
    assert torch.equal(last.weight, tuned)  # a rolled-back step leaves the layer alone


def test_top_layer_tuning_is_bounded():
    with pytest.raises(ValueError, match="lr_top"):
        trainer_config(lr_top=-0.1)
    with pytest.raises(ValueError, match="top_layers"):
        trainer_config(lr_top=0.1, top_layers=0)
    model, _ = pretrained(steps=1)
    with pytest.raises(ValueError, match="layers must be in"):
        LiveTrainer(model, trainer_config(lr_top=0.1, top_layers=3))  # the top MLP has 2


def test_a_trainer_with_no_table_to_train_skips_instead_of_failing():
    model, stream = pretrained(steps=1)
    trainer = LiveTrainer(model, trainer_config(budget_fraction=1e-6))  # no table affords B
    assert trainer.skipped_tables == ["user", "item"] and not trainer.lives
    result = trainer.train_step(stream.batch(), now=1.0)
    assert result.skipped == "nothing to train" and math.isfinite(result.loss)


def test_a_rank_change_leaves_no_second_copy_of_a_table_behind():
    """A re-factoring gives a table new tensors of its own; the groups adopt them back into
    their regions at once, not at the next step, so between steps (a node's idle trainer, the
    experiment's memory samples) no table is held twice (the walk read the old region beside
    the new state: a hybrid's landing samples over 2%)."""
    model, stream = pretrained(steps=20)
    trainer = LiveTrainer(model, trainer_config(adapt_every=2, room_every=1),
                          budgets={"user": 2500, "item": 4000})  # fmt: skip
    served = model_storages(model)

    def held_once() -> None:
        held = held_tensor_bytes((trainer.controllers, trainer.groups), served)
        fixed = trainer.groups.feature_index.nbytes  # the kernel's table order, 8 B a table
        assert held - fixed <= sum(ctl.accounted_bytes() for ctl in trainer.controllers.values())
        for m in trainer.groups.members:
            region = m.group.a.untyped_storage().data_ptr()
            assert m.live.A.untyped_storage().data_ptr() == region, m.name

    changes = 0
    for _ in range(40):
        trainer.process(stream.batch())
        changes += sum(e.kind == "rank" for e in trainer.drain_events())
        held_once()
    assert changes > 0
    trainer.set_budget("item", 1200, now=100.0)  # a policy's smaller budget: fewer rows, rank
    held_once()
