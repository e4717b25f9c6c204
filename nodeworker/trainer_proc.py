"""The trainer process: joins served requests with their labels (nodeworker.feed: it reads what
inference appended to the shared-memory rings), takes LoRA steps on the joined samples, on its
own cores, at the duty cycle the QoS controller allows, and publishes factor versions into
shared memory. The join runs whatever the duty (paused too): it is bookkeeping that keeps the
rings drained and the label window's timeouts on time, and only the steps are throttled; its
cpu time is reported in the stats (feed_cpu_s).

It maps the base tables copy-on-write, so its folds (pruned rows) stay private until inference
installs the version that carries them: before writing version v it sends the rows folded since
the last version through ``ends.folded``, and v's ``aux`` says how many patch messages precede it.
It also builds each version's ServingDelta (on its own cpus, charged to its duty cycle), so the
inference side only serves it from shared memory, in place. Before it reports ready it makes the
runtime's one-time allocations on a throwaway trainer (nodeworker/trainer_warmup.py), so what
it holds when ready is its fixed part and what grows after is proportional. Its side of a delta
rebase is nodeworker/trainer_rebase.py; what its stats say by table, nodeworker/trainer_report.py.
"""

from __future__ import annotations

import logging
import os
import queue
import time
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from pathlib import Path

import numpy as np

from dlrm_core.checkpoint import load_model
from dlrm_core.fold_bitmap import FoldBitmap
from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.malloc_policy import bound_native_heap, trim_native_heap
from dlrm_core.memory_account import MemoryAccount
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import import_factors
from nodeworker import placement, protocol
from nodeworker.base_pages import PrivateBasePages
from nodeworker.feed import Feed, FeedConfig
from nodeworker.feed_rings import FeedRings
from nodeworker.node_budget import node_budget, rank_policy, serving_key_bytes
from nodeworker.qos import DutyCycle
from nodeworker.shared_memory import (
    SharedFactors,
    TableCapacity,
    map_base_tables,
)
from nodeworker.snapshots import read_patch, read_top, write_table_files, write_top
from nodeworker.trainer_messages import (
    AnnounceSnapshot,
    AnsweredCommand,
    CommandResult,
    CpusPinned,
    FoldedRows,
    PolicyApplied,
    RebaseRows,
    Reply,
    RowsRebased,
    SetPolicy,
    SnapshotTaken,
    StopTrainer,
    TakeSnapshot,
    TrainerCommand,
    TrainerOutput,
    TrainerReady,
    TrainerStats,
)
from nodeworker.trainer_rebase import TrainerRebase
from nodeworker.trainer_report import memory_by_table, trainer_events
from nodeworker.trainer_warmup import warm_up
from nodeworker.tuned_top import TopTuning, fitting, trainer_fields

log = logging.getLogger(__name__)

FEED_PERIOD_S = 0.05  # joined rows wait at most this long for a training batch to fill
# a command's publish (a snapshot, a policy, a rebase: its answer names the version) waits this
# long for inference to install the last version and free the other slot; the loop's does not
COMMAND_PUBLISH_WAIT_S = 10.0
WARMUP_STEPS = 60  # the throwaway trainer's steps before ready: past a rank adaptation


@dataclass(frozen=True)
class TrainerSetup:
    checkpoint: str  # base model (MLPs; tables come from shm_dir)
    shm_dir: str
    capacities: dict[str, TableCapacity]
    policy: protocol.Policy
    cpus: tuple[int, ...]
    start_version: int  # versions published continue after this
    restore_dir: str | None = None  # factors to import at start (a snapshot)
    publish_interval_s: float = 0.2
    lr_a: float = 0.05
    lr_b: float = 1e-3
    adapt_every: int = 50
    stats_interval_s: float = 0.25
    feed: FeedConfig = FeedConfig()


@dataclass(frozen=True)
class TrainerEnds:
    """The trainer process's ends of its channels to the node."""

    commands: Queue[TrainerCommand]
    outputs: Queue[TrainerOutput]
    folded: Connection  # FoldedRows out, before the version that needs them
    duty: Synchronized[float]  # the share of cpu time it may use, set by the node's QoS loop


class TrainerLoop:
    def __init__(self, setup: TrainerSetup, ends: TrainerEnds) -> None:
        from dlrm_core.trainer import LiveTrainer, TrainerConfig

        model = load_model(setup.checkpoint)
        self.setup = setup = replace(setup, policy=fitting(model.config, setup.policy))
        self.ends = ends
        shm = Path(setup.shm_dir)
        map_base_tables(model, shm, shared=False)
        self.dim = model.config.embedding_dim
        self.model_config = model.config
        policy = rank_policy(setup.policy, self.dim)
        self.budget_pct = setup.policy.memory_budget_pct
        self.budget = node_budget(model.config, setup.policy, among=tuple(setup.capacities))
        for name in set(setup.capacities) - set(self.budget.tables):  # a restart at less pct
            log.warning("table %r is not trained: %s", name, self.budget.untrained[name])
        config = TrainerConfig(
            tables=tuple(self.budget.tables),
            live=LiveEmbeddingConfig(rank=min(max(4, policy.r_min), policy.r_max)),
            policy=policy,
            budget_fraction=self.budget_pct / 100.0,
            lr_a=setup.lr_a,
            lr_b=setup.lr_b,
            adapt_every=setup.adapt_every,
            publish_every=10**9,  # this loop publishes on time, see publish()
            in_process_join=False,  # the sample cache joins; versions go to shared memory
            node_key_bytes=serving_key_bytes(model.config.table_sizes),
            **trainer_fields(model.config, setup.policy),
        )
        warm_up(model.config, config, self.budget.tables, setup.feed.batch_rows, WARMUP_STEPS)
        self.trainer = LiveTrainer(model, config, self.budget.tables)
        self.tuning = TopTuning(self.trainer)  # the top MLP's layers it tunes (lr_top)
        # a budget that lowers a table's starting rank makes its event at construction, at
        # stream time 0 (RankController): on a node it happened now (ingest refuses time 0)
        started = time.time()
        self.start_events = [replace(e, timestamp=started) for e in self.trainer.drain_events()]
        self.shared = SharedFactors(shm, setup.capacities, create=False)
        self.feed = Feed(
            FeedRings.open(shm, create=False),
            model.config.feature_names,
            model.config.n_dense,
            replace(setup.feed, backlog_bytes=self.budget.backlog),
        )
        self.feed_cpu_s = 0.0
        self.version = setup.start_version
        self.patches_sent = 0
        # the base rows folded since the checkpoint, for snapshots: a bit per row, fixed bytes
        self.folded = {name: FoldBitmap(lv.num_rows) for name, lv in self.trainer.lives.items()}
        self.private_pages = {
            name: PrivateBasePages.of_table(lv.base.weight, shm, name)
            for name, lv in self.trainer.lives.items()
        }
        self.rebase = TrainerRebase(self.trainer, self.private_pages, self.tuning)
        self.rebase.limit(self.budget, setup.policy.rebase_period_s)
        self.fresh: list[tuple[int, list[float]]] = []
        self.pending_label_times: list[np.ndarray] = []
        self.steps_since_publish = 0
        self.gate = DutyCycle()
        self.last_publish = time.time()
        if setup.restore_dir:
            self._restore(Path(setup.restore_dir))

    def _restore(self, directory: Path) -> None:
        """A snapshot's factors, folds and tuned top, published as the first version."""
        for name, live in self.trainer.lives.items():
            if (directory / f"{name}.factors").exists():
                import_factors(live, directory / f"{name}.factors", name)
                self.folded[name].add(read_patch(directory / f"{name}.patch")[0])
        self.tuning.load(read_top(directory))
        # a snapshot taken at a higher budget than this start's (lowered since) holds more
        # rows than the tables' regions: the coldest go, folded into the base, as a live
        # policy change would evict them
        self._fit_budget(time.time())
        self.publish(time.time(), COMMAND_PUBLISH_WAIT_S)

    # --- publishing ---

    def publish(self, now: float, wait_s: float = 0.0) -> None:
        """Publish a version, once inference has installed the last one (it serves from the
        shared slots in place), waiting ``wait_s`` for that: a command's publish fails loudly
        after it, the loop's simply comes back on its next turn."""
        if not self.shared.wait_writable(wait_s):
            if wait_s:
                raise RuntimeError(
                    f"inference did not install version {self.version} in {wait_s} s"
                )
            return
        patch: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for name, live in self.trainer.lives.items():
            pages = self.private_pages[name]
            pages.release()  # the pages whose folds inference has applied since
            ids = live.take_folded()
            if ids.numel():
                self.folded[name].add(ids)
                pages.folded(ids)
                patch[name] = (ids.numpy(), live.base.weight.detach()[ids].numpy().copy())
        top = self.tuning.published()
        if patch or top:
            self.ends.folded.send(FoldedRows(patch, top))  # before the version that needs it
            self.patches_sent += 1
        self.version += 1
        tables = {name: live.factors() for name, live in self.trainer.lives.items()}
        cfg = self.model_config
        serving = ServingDelta.from_factors(
            self.version, cfg.feature_names, cfg.table_sizes, tables
        )
        self.shared.write(self.version, now, tables, serving, aux=self.patches_sent)
        if self.pending_label_times:
            self.fresh.append((self.version, np.concatenate(self.pending_label_times).tolist()))
            self.pending_label_times = []
        self.steps_since_publish = 0
        self.last_publish = now
        trim_native_heap()  # the steps' and this build's freed temporaries (malloc_policy)

    # --- commands from the runtime ---

    def command(self, cmd: AnsweredCommand) -> CommandResult:
        now = time.time()
        if isinstance(cmd, RebaseRows):
            return self.rebase_rows(cmd, now)
        if isinstance(cmd, AnnounceSnapshot):
            return self.rebase.announce(cmd, now)
        if isinstance(cmd, SetPolicy):
            policy = rank_policy(cmd.policy, self.dim)
            self.budget_pct = cmd.policy.memory_budget_pct
            budget = node_budget(self.model_config, cmd.policy, among=tuple(self.trainer.lives))
            for name in self.trainer.controllers:
                if name not in budget.tables:  # ctl.set_budget refuses, and so the policy
                    raise ValueError(f"table {name!r}: {budget.untrained[name]}")
            self.budget = budget
            self.rebase.limit(budget, cmd.policy.rebase_period_s)
            self.feed.config = replace(self.feed.config, backlog_bytes=budget.backlog)
            self.tuning.apply(cmd.policy)
            for ctl in self.trainer.controllers.values():
                ctl.policy = policy
            self._fit_budget(now)
            self.publish(now, COMMAND_PUBLISH_WAIT_S)
            return PolicyApplied(self.trainer.ranks())
        if isinstance(cmd, TakeSnapshot):
            self.publish(now, COMMAND_PUBLISH_WAIT_S)
            folded = {name: bits.ids() for name, bits in self.folded.items()}
            digests = write_table_files(self.trainer.lives, folded, Path(cmd.directory))
            write_top(Path(cmd.directory), self.tuning.kept())
            return SnapshotTaken(self.version, digests)
        return CpusPinned(placement.pin_process(cmd.cpus))

    def rebase_rows(self, cmd: RebaseRows, now: float) -> RowsRebased:
        """A delta rebase (nodeworker.trainer_rebase), then a version without the dropped
        corrections."""
        done = self.rebase.apply(cmd, now)
        self.publish(now, COMMAND_PUBLISH_WAIT_S)
        return RowsRebased(self.version, done.dropped, done.carried, done.carry)

    def _fit_budget(self, now: float) -> None:
        """Each table within its share of the budget (and its shared slot): the controllers
        evict the coldest rows, then lower the rank, where they hold more."""
        for name, ctl in self.trainer.controllers.items():
            ctl.set_budget(min(self.budget.tables[name], self._cap_bytes(name)), now)
        self.trainer.groups.sync()  # a shrunk table back in its region (LiveTrainer.adapt)

    def _cap_bytes(self, name: str) -> int:
        cap = self.setup.capacities[name]
        return cap.a_floats * 4  # what the shared slot can hold

    # --- the loop ---

    def run(self) -> None:
        last_stats = last_feed = 0.0
        while True:
            cmd = self._next_command()
            if isinstance(cmd, StopTrainer):
                self.send_stats()
                return
            if cmd is not None:
                self._answer(cmd)
            now = time.time()
            if now - last_feed >= FEED_PERIOD_S:
                started = time.thread_time()
                self.feed.poll(now)
                self.feed_cpu_s += time.thread_time() - started
                last_feed = now
            if now - last_stats >= self.setup.stats_interval_s:
                self.send_stats()
                last_stats = now
            if (
                self.steps_since_publish
                and now - self.last_publish >= self.setup.publish_interval_s
            ):
                start = time.perf_counter()
                self.publish(now)
                self.gate.spend(time.perf_counter() - start)
            wait = self.gate.wait_time(self.ends.duty.value)
            if wait > 0:
                time.sleep(min(wait, 0.02))
            elif not self._train_one():
                time.sleep(max(0.0, min(0.02, last_feed + FEED_PERIOD_S - time.time())))

    def _next_command(self) -> TrainerCommand | None:
        try:
            return self.ends.commands.get_nowait()
        except queue.Empty:
            return None

    def _answer(self, cmd: AnsweredCommand) -> None:
        try:
            reply = Reply(cmd.id, result=self.command(cmd))
        except Exception as exc:  # the node reports it to the caller
            log.exception("trainer command %s failed", type(cmd).__name__)
            reply = Reply(cmd.id, error=f"{type(exc).__name__}: {exc}")
        self._put(reply)

    def _train_one(self) -> bool:
        """One step on the next joined batch; False when none is waiting."""
        joined = self.feed.next_batch()
        if joined is None:
            return False
        batch, label_times = joined
        start = time.perf_counter()
        result = self.trainer.train_step(batch, time.time())
        if result.skipped is None:
            self.pending_label_times.append(label_times)
            self.steps_since_publish += 1
        if self.trainer.fold_log_over():  # its folds go to inference now, before the next step
            self.publish(time.time())
        self.gate.spend(time.perf_counter() - start)
        return True

    def _put(self, output: TrainerOutput) -> None:
        self.ends.outputs.put(output)

    def memory_account(self) -> MemoryAccount:
        """The trainer's account (LiveTrainer.memory_account) with the fold records, the node's
        copies outside the trainer and the feed's backlog, against each table's share of the
        node's budget (NodeBudget.shares: they add up to the node's cap)."""
        account = self.trainer.memory_account()
        held = self.shared.held_bytes()
        tables = {
            name: replace(
                table,
                fold_record=self.folded[name].nbytes + self.private_pages[name].pending.nbytes,
                private_base=self.private_pages[name].private_bytes,
                node_copies=held[name],
                budget=self.budget.shares[name],
            )
            for name, table in account.tables.items()
        }
        pending = account.pending + self.feed.nbytes()
        dense = account.dense + self.tuning.sent_bytes  # the published copy, see tuned_top
        anchor = self.rebase.nbytes  # held from a rebase's announce until its rows land
        return replace(account, tables=tables, pending=pending, dense=dense, rebase_anchor=anchor)

    def send_stats(self) -> None:
        stats = self.trainer.stats
        # pages whose folds inference has applied go back now, not at the next publish: an idle
        # or paused trainer would otherwise hold them (and report them) until it trains again
        for pages in self.private_pages.values():
            pages.release()
        self.rebase.expire(time.time())  # an anchor whose rows did not come goes too
        account, feed = self.memory_account(), self.feed.report()
        memory = memory_by_table(account, feed.join_bytes)
        events = trainer_events([*self.start_events, *self.trainer.drain_events()])
        self.start_events = []
        self._put(
            TrainerStats(
                steps=stats.steps,
                samples=stats.samples,
                skipped=stats.skipped,
                version=self.version,
                ranks=self.trainer.ranks(),
                memory=memory,
                events=events,
                fresh=tuple(self.fresh),
                feed=feed,
                feed_cpu_s=self.feed_cpu_s,
            )
        )
        self.fresh = []


def trainer_main(setup: TrainerSetup, ends: TrainerEnds) -> None:
    """Entry point of the spawned trainer process."""
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"))
    bound_native_heap()
    if setup.cpus:
        placement.pin_process(setup.cpus)
    placement.configure_torch_threads(len(setup.cpus) or os.cpu_count() or 1)
    loop = TrainerLoop(setup, ends)
    ends.outputs.put(TrainerReady(loop.version))
    loop.run()
