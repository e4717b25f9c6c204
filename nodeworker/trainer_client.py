"""The node's handle on its trainer: ProcessTrainerClient runs the trainer process
(nodeworker.trainer_proc) and talks to it in typed messages (nodeworker.trainer_messages);
NoTrainer is a node without one (a baseline), which still joins its served requests with their
labels, in a thread, for the quality metrics. The rest of the node uses either through
TrainerClient and never asks which it has.

What the trainer reports lands here: its stats go to the runtime's metrics and events, the
join's counts to JoinCounts, and the base rows it folds to the version installer (``on_folded``,
tagged with the installer epoch the trainer was started in, so a replaced trainer's late rows
are dropped there).
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.sharedctypes import Synchronized
from typing import Any

import numpy as np

from nodeworker import protocol
from nodeworker.feed import Feed, FeedReport
from nodeworker.join_counts import JoinCounts
from nodeworker.node_events import NodeEvents
from nodeworker.runtime_metrics import RuntimeMetrics
from nodeworker.trainer_messages import (
    AnnounceSnapshot,
    AnsweredCommand,
    CommandResult,
    FoldedRows,
    PinCpus,
    PolicyApplied,
    RebaseRows,
    Reply,
    RowsRebased,
    SetPolicy,
    SnapshotAnnounced,
    SnapshotTaken,
    StopTrainer,
    TakeSnapshot,
    TrainerOutput,
    TrainerReady,
    TrainerStats,
)
from nodeworker.trainer_proc import TrainerEnds, TrainerSetup, trainer_main

log = logging.getLogger(__name__)

JOIN_PERIOD_S = 0.05  # how often a node without trainer joins, for the quality metrics
COMMAND_TIMEOUT_S = 60.0  # a command the trainer has not answered by then fails
POLL_S = 0.2  # how long a reader thread waits for a message before it checks it should stop
FoldedSink = Callable[[FoldedRows, int], None]  # (rows, the installer epoch of the trainer)


class TrainerClient(ABC):
    """The trainer as the rest of the node sees it."""

    def __init__(self, metrics: RuntimeMetrics) -> None:
        self.metrics = metrics
        self.join = JoinCounts()
        self.last_stats: TrainerStats | None = None

    def joined(self, report: FeedReport) -> None:
        self.join.update(report)
        self.metrics.joined(report.labels, report.scores, time.time())

    @property
    @abstractmethod
    def running(self) -> bool:
        """A trainer was started and was not stopped or found dead since."""

    @property
    @abstractmethod
    def alive(self) -> bool: ...

    @property
    @abstractmethod
    def pid(self) -> int | None: ...

    @property
    @abstractmethod
    def duty(self) -> float:
        """The share of its cpu time the trainer may use now (0 without a trainer)."""

    @abstractmethod
    def set_duty(self, duty: float) -> None: ...

    @abstractmethod
    def start(self, setup: TrainerSetup, duty: float, epoch: int) -> None: ...

    @abstractmethod
    def wait_ready(self, timeout: float = 120.0) -> None: ...

    @abstractmethod
    def set_policy(self, policy: protocol.Policy) -> dict[str, int] | None:
        """Each trained table's rank under the policy; None without a trainer."""

    @abstractmethod
    def pin(self, cpus: tuple[int, ...]) -> None: ...

    @abstractmethod
    def snapshot(self, directory: str) -> SnapshotTaken: ...

    def announce_snapshot(self, snapshot: int, taken_at: float) -> SnapshotAnnounced | None:
        """The trainer anchors its served rows for the rebase of ``snapshot``
        (AnnounceSnapshot); None when no trainer runs."""
        return None

    def rebase_rows(
        self,
        tables: dict[str, tuple[np.ndarray, np.ndarray]],
        dense: dict[str, np.ndarray],
        snapshot: int | None = None,
    ) -> RowsRebased | None:
        """Drop the corrections of the rebased rows and load the MLPs in the trainer
        (RebaseRows), carrying what it learnt since the announce of ``snapshot``; None when
        no trainer runs."""
        return None

    @abstractmethod
    def reap(self) -> int | None:
        """The exit code of a trainer that died (then forgotten: not running), else None."""

    @abstractmethod
    def stop(self) -> None:
        """Stop the trainer (a rebase starts the next one)."""

    def close(self) -> None:
        """The node stops: everything this client runs stops."""
        self.stop()


class NoTrainer(TrainerClient):
    """A node without a trainer: inference only, its join runs in a thread here."""

    def __init__(self, metrics: RuntimeMetrics, feed: Feed) -> None:
        super().__init__(metrics)
        self.feed = feed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._join_loop, name="join", daemon=True)

    running = alive = False
    pid = None
    duty = 0.0

    def set_duty(self, duty: float) -> None:
        pass  # nothing to throttle

    def start(self, setup: TrainerSetup, duty: float, epoch: int) -> None:
        if not self._thread.is_alive():
            self._thread.start()

    def wait_ready(self, timeout: float = 120.0) -> None:
        pass

    def set_policy(self, policy: protocol.Policy) -> None:
        return None

    def pin(self, cpus: tuple[int, ...]) -> None:
        pass

    def snapshot(self, directory: str) -> SnapshotTaken:
        raise RuntimeError("the trainer process is not running")

    def reap(self) -> None:
        return None

    def stop(self) -> None:
        pass  # no trainer; the join goes on

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            # no timeout: the node closes the rings next, and a join starved of cpu was still
            # reading seconds of traffic 2 s later (ValueError: released memoryview, at stop of
            # a replay at load 17); a poll ends when it has read what the rings held
            self._thread.join()

    def _join_loop(self) -> None:
        while not self._stop.wait(JOIN_PERIOD_S):
            self.feed.poll()
            self.joined(self.feed.report())


class ProcessTrainerClient(TrainerClient):
    """The trainer process: started, restarted, commanded and read from here. Each process
    gets its own queues, pipe and two reader threads, so nothing a replaced process sends late
    reaches the node as if its successor had sent it."""

    def __init__(
        self, name: str, metrics: RuntimeMetrics, events: NodeEvents, on_folded: FoldedSink
    ) -> None:
        super().__init__(metrics)
        self.name = name
        self.events = events
        self.on_folded = on_folded
        self._ctx = mp.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._cmd_q: mp.Queue[Any] | None = None
        self._duty: Synchronized[float] | None = None
        self._generation = 0  # bumped when a process is started, stopped or found dead
        self._ready = threading.Event()
        self._replies: dict[int, Reply] = {}
        self._reply_cond = threading.Condition()
        self._cmd_ids = itertools.count(1)
        self._readers: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return self._proc is not None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    @property
    def duty(self) -> float:
        return 0.0 if self._proc is None or self._duty is None else float(self._duty.value)

    def set_duty(self, duty: float) -> None:
        if self._duty is not None:
            self._duty.value = duty

    def start(self, setup: TrainerSetup, duty: float, epoch: int) -> None:
        """A new trainer process (the node has none running) starting a new join."""
        self.join.retire()
        self.metrics.trainer_started()
        self._generation += 1
        self._ready = threading.Event()
        self._cmd_q = self._ctx.Queue()
        out_q = self._ctx.Queue()
        # a pipe, not a queue: send() has written the rows when the trainer writes the version
        folded_recv, folded_send = self._ctx.Pipe(duplex=False)
        self._duty = self._ctx.Value("d", duty, lock=False)
        self._proc = self._ctx.Process(
            target=trainer_main,
            args=(setup, TrainerEnds(self._cmd_q, out_q, folded_send, self._duty)),
            name=f"trainer-{self.name}",
            daemon=True,
        )
        self._proc.start()
        self._readers = [t for t in self._readers if t.is_alive()]
        generation = self._generation
        for name, read in (
            ("trainer-outputs", lambda: self._read_outputs(generation, out_q)),
            ("trainer-folded", lambda: self._read_folded(generation, folded_recv, epoch)),
        ):
            thread = threading.Thread(target=read, name=name, daemon=True)
            thread.start()
            self._readers.append(thread)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self._proc is not None and not self._ready.wait(POLL_S):
            if not self._proc.is_alive():
                raise RuntimeError(f"the trainer process exited ({self._proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"the trainer process did not start within {COMMAND_TIMEOUT_S} s"
                )

    def set_policy(self, policy: protocol.Policy) -> dict[str, int] | None:
        if self._proc is None:
            return None  # between a stop and the next start: the next starts on the policy
        result = self._call(lambda i: SetPolicy(i, policy))
        assert isinstance(result, PolicyApplied)
        return result.ranks

    def pin(self, cpus: tuple[int, ...]) -> None:
        if self._proc is None:
            return  # the next starts on the new placement
        self._call(lambda i: PinCpus(i, cpus))

    def snapshot(self, directory: str) -> SnapshotTaken:
        result = self._call(lambda i: TakeSnapshot(i, directory))
        assert isinstance(result, SnapshotTaken)
        return result

    def announce_snapshot(self, snapshot: int, taken_at: float) -> SnapshotAnnounced | None:
        if self._proc is None:
            return None  # the next trainer starts on the base the rebase writes
        result = self._call(lambda i: AnnounceSnapshot(i, snapshot, taken_at))
        assert isinstance(result, SnapshotAnnounced)
        return result

    def rebase_rows(
        self,
        tables: dict[str, tuple[np.ndarray, np.ndarray]],
        dense: dict[str, np.ndarray],
        snapshot: int | None = None,
    ) -> RowsRebased | None:
        if self._proc is None:
            return None  # between a stop and the next start: the next starts on the new base
        result = self._call(lambda i: RebaseRows(i, tables, dense, snapshot))
        assert isinstance(result, RowsRebased)
        return result

    def reap(self) -> int | None:
        proc = self._proc
        if proc is None or proc.is_alive():
            return None
        self._forget()
        return proc.exitcode

    def stop(self) -> None:
        proc, cmd_q = self._proc, self._cmd_q
        if proc is None or cmd_q is None:
            return
        cmd_q.put(StopTrainer())
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()
        self._forget()
        for thread in self._readers:
            thread.join(timeout=2 * POLL_S)

    def _forget(self) -> None:
        self._proc = None
        self._duty = None
        self._generation += 1  # its reader threads stop

    def _call(self, command: Callable[[int], AnsweredCommand]) -> CommandResult:
        if self._cmd_q is None or not self.alive:
            raise RuntimeError("the trainer process is not running")
        cmd = command(next(self._cmd_ids))
        self._cmd_q.put(cmd)
        with self._reply_cond:
            if not self._reply_cond.wait_for(lambda: cmd.id in self._replies, COMMAND_TIMEOUT_S):
                raise TimeoutError(
                    f"trainer did not answer {type(cmd).__name__} within {COMMAND_TIMEOUT_S} s"
                )
            reply = self._replies.pop(cmd.id)
        if reply.result is None:
            raise RuntimeError(reply.error)
        return reply.result

    def _read_outputs(self, generation: int, out_q: mp.Queue[Any]) -> None:
        while generation == self._generation:
            try:
                output: TrainerOutput = out_q.get(timeout=POLL_S)
            except (queue.Empty, OSError, EOFError):
                continue
            if isinstance(output, TrainerReady):
                self._ready.set()
            elif isinstance(output, TrainerStats):
                self._take_stats(output, current=generation == self._generation)
            else:
                with self._reply_cond:
                    self._replies[output.id] = output
                    self._reply_cond.notify_all()

    def _take_stats(self, stats: TrainerStats, current: bool) -> None:
        self.last_stats = stats
        self.events.extend(stats.events)
        self.metrics.trained(stats, time.time())
        if current:  # not a late report of a replaced trainer
            self.joined(stats.feed)

    def _read_folded(self, generation: int, conn: Connection, epoch: int) -> None:
        while generation == self._generation:
            try:
                if not conn.poll(POLL_S):
                    continue
                rows = conn.recv()
            except (OSError, EOFError):  # the trainer is gone
                time.sleep(POLL_S)
                continue
            self.on_folded(rows, epoch)
