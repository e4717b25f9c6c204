"""NodeRuntime: the long-lived inference-node process.

This process serves (HTTP threads -> ``predict``) on the inference cores and appends each served
request and each feedback label once to shared-memory rings (nodeworker.feed). The trainer
process, on the trainer cores, joins them in its sample cache, learns from the joined rows under
the QoS duty cycle and publishes factor versions into shared memory, each with its serving
layout built there; a node without a trainer joins them in a thread, for the quality metrics.
An installer thread copies the newest complete version (never a torn one) out off the request
path and swaps it in between two batches.
Telemetry, the control channel and periodic factor snapshots run as threads here, on the
inference cpus too: moved to the trainer's cpu, threads that share the GIL with inference passed
it back and forth across cores and the bench's node fell behind its load (1,182-1,342 of 1,800
req/s against 1,708-1,856 on one cpu).

Two process-wide settings keep the request tail short while these threads share the GIL with
inference: everything alive after set-up (torch, the model, the modules) is moved out of the
garbage collector's reach (gc.freeze), so a full collection no longer walks it while every thread
waits (80-250 ms per collection measured on the bench's node); and the GIL switch interval is cut
from 5 ms to GIL_SWITCH_INTERVAL_S: a request gives the GIL up in every torch op and then waited up
to the whole interval behind a Python-busy thread (label delivery, the replayer) each time.
"""

from __future__ import annotations

import gc
import itertools
import logging
import multiprocessing as mp
import os
import queue
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.checkpoint import load_model, save_model
from dlrm_core.model import DLRM
from dlrm_core.rank import min_budget_bytes
from dlrm_core.schema import StreamSchema
from dlrm_core.serving import ServingDelta
from nodeworker import placement, protocol
from nodeworker.feed import Feed, FeedConfig, FeedRings, FeedWriter
from nodeworker.qos import QosConfig, QosController
from nodeworker.runtime_control import RuntimeControl, _event
from nodeworker.runtime_metrics import RuntimeMetrics
from nodeworker.sample_cache import Feedback
from nodeworker.shared_memory import (
    SharedFactors,
    TableCapacity,
    base_weight,
    budget_bytes,
    map_base_tables,
    write_base_tables,
)
from nodeworker.telemetry import CpuSampler, NodeSnapshot
from nodeworker.trainer_proc import TrainerSetup, rank_policy, trainer_main

log = logging.getLogger(__name__)

CAPACITY_PCT = 10.0  # shared factor slots hold any budget a policy may set (sparse files)
FEED_PERIOD_S = 0.05  # how often a node without trainer joins, for the quality metrics
INSTALL_POLL_S = 0.01  # how often the installer looks for a newer factor version
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    data_dir: Path
    checkpoint: str  # the base model (dlrm_core.checkpoint)
    policy: dict[str, Any] = field(default_factory=lambda: dict(protocol.POLICY_DEFAULTS))
    shm_root: Path = Path("/dev/shm")
    sysfs_root: str = "/"
    trainer: bool = True  # False: inference only (a baseline)
    pin: bool = True  # disjoint cores for inference and trainer
    qos: bool = True  # False: the trainer runs at full duty whatever the latency
    label_window_s: float = 30.0
    cache_max_pending: int = 200_000
    trainer_batch_rows: int = 256
    # joined batches waiting for the trainer, oldest dropped (with 8 more queued, this was 72)
    trainer_backlog_batches: int = 72
    publish_interval_s: float = 0.2
    snapshot_interval_s: float = 60.0
    qos_period_s: float = 0.25
    qos_window_s: float = 2.0

    def __post_init__(self) -> None:
        protocol.node_queue(self.name)
        _, errors = protocol.validate_policy(self.policy)
        if errors:
            raise ValueError(f"invalid policy: {errors}")


def build_fresh_checkpoint(schema: StreamSchema, path: Path, seed: int = 0) -> str:
    """A freshly initialised DLRM for ``schema`` saved as the base checkpoint."""
    from dlrm_core.model import DLRMConfig

    torch.manual_seed(seed)
    save_model(path, DLRM(DLRMConfig.from_schema(schema)))
    return str(path)


class NodeRuntime(RuntimeControl):
    def __init__(self, config: RuntimeConfig):
        self.config = config
        clean, _ = protocol.validate_policy(config.policy)
        self.policy = clean
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.events: deque[dict] = deque(maxlen=10_000)
        self.topology = placement.read_topology(config.sysfs_root)
        self.plan = self._plan()
        # stop() gives the calling thread its cpus and torch threads back (tests, embedding)
        self._unpinned = (tuple(os.sched_getaffinity(0)), torch.get_num_threads())
        if config.pin:  # before the tables exist: first touch puts them on this node
            placement.pin_process(self.plan.inference_cpus)
            placement.configure_torch_threads(self.plan.inference_threads)
        self.checkpoint = config.checkpoint
        self.model = load_model(self.checkpoint)
        self.model.eval()
        self.model.requires_grad_(False)
        self.schema_keys = self.model.config.feature_names
        # tmpfs when the host has it; a file in the data dir is shared through the page cache
        shm_root = config.shm_root if config.shm_root.is_dir() else self.data_dir / "shm"
        _remove_stale_segments(shm_root, config.name)
        self.shm_dir = shm_root / f"liveupdate-{config.name}-{os.getpid()}"
        write_base_tables(self.model, self.shm_dir)
        map_base_tables(self.model, self.shm_dir, shared=True)
        self.restore_dir = self._restorable_snapshot()
        if self.restore_dir:
            self._apply_patch_files(self.restore_dir)
        self.trained = self._trained_tables()
        dim = self.model.config.embedding_dim
        self.capacities = {
            name: TableCapacity.for_budget(
                budget_bytes(base_weight(self.model, name), CAPACITY_PCT), dim, dim
            )
            for name in self.trained
        }
        self.shared = SharedFactors(self.shm_dir, self.capacities, create=True)
        self.delta: ServingDelta | None = None  # the factor version being served
        self.installed = 0
        self.install_epoch = 0  # bumped when a rebase or restart makes built versions stale
        self.patches_applied = 0
        self._patches: deque[dict] = deque()
        self._patch_cond = threading.Condition()
        self._infer_lock = threading.Lock()
        self._next_id = 0  # request ids, handed out under the inference lock
        self._inflight = 0
        self._inflight_lock = threading.Lock()
        self.rings = FeedRings.open(self.shm_dir, create=True)
        self.feed = FeedWriter(self.rings, config.label_window_s, config.cache_max_pending)
        self.qos = QosController(
            QosConfig(
                sla_p99_ms=float(clean["sla_p99_ms"]),
                window_s=config.qos_window_s,
                max_duty=float(clean["max_trainer_duty"]),
            )
        )
        self.metrics = RuntimeMetrics()
        self.cpu = CpuSampler()
        self._reported = (0, 0)  # (dropped, skipped) already in telemetry
        # the join's counts: of the current trainer (its last report), and of the ones before
        self._feed_now: dict[str, int] = {}
        self._feed_before: dict[str, int] = {}
        self._trainer_gen = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._replies: dict[int, Any] = {}
        self._reply_cond = threading.Condition()
        self._cmd_ids = itertools.count(1)
        self.trainer_stats: dict[str, Any] = {}
        self.trainer_proc = None
        self.partitions: list[placement.PartitionResult] = []
        self.mode_paused = clean["mode"] != "liveupdate"
        self._ctx = mp.get_context("spawn")

    # --- set-up ----------------------------------------------------------------------------

    def _plan(self) -> placement.PlacementPlan:
        return placement.plan_placement(
            self.topology,
            trainer_cores=int(self.policy["trainer_cores"]),
            trainer_share=float(self.policy["trainer_share"]),
        )

    def _trained_tables(self) -> tuple[str, ...]:
        policy = rank_policy(self.policy, self.model.config.embedding_dim)
        floor = min_budget_bytes(policy, self.model.config.embedding_dim)
        pct = float(self.policy["memory_budget_pct"])
        return tuple(
            n for n in self.schema_keys if budget_bytes(base_weight(self.model, n), pct) >= floor
        )

    def start(self) -> NodeRuntime:
        if self.config.trainer:
            self._start_trainer(self.restore_dir)
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self.metrics.gc_callback)
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        for target in (
            self._join_loop,
            self._install_loop,
            self._read_trainer,
            self._read_patches,
            self._qos_loop,
            self._snapshot_loop,
        ):
            thread = threading.Thread(target=target, name=target.__name__, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.partitions = self._partition()
        self.events.append(
            _event(
                "policy", {"placement": self.plan.as_dict(), "partitions": self._partition_report()}
            )
        )
        return self

    def _feed_config(self) -> FeedConfig:
        return FeedConfig(
            label_window_s=self.config.label_window_s,
            max_pending=self.config.cache_max_pending,
            batch_rows=self.config.trainer_batch_rows,
            backlog_batches=self.config.trainer_backlog_batches,
            train=self.config.trainer,
        )

    def _start_trainer(self, restore_dir: Path | None) -> None:
        self._retire_feed()
        self.cmd_q = self._ctx.Queue()
        self.out_q = self._ctx.Queue()
        # a pipe, not a queue: send() has written the patch when the trainer writes the version
        self.patch_recv, patch_send = self._ctx.Pipe(duplex=False)
        self.duty = self._ctx.Value("d", 0.0 if self.mode_paused else self.qos.duty, lock=False)
        setup = TrainerSetup(
            checkpoint=str(self.checkpoint),
            shm_dir=str(self.shm_dir),
            capacities=self.capacities,
            policy=self.policy,
            cpus=self.plan.trainer_cpus if self.config.pin else (),
            start_version=self.shared.version,
            restore_dir=str(restore_dir) if restore_dir else None,
            publish_interval_s=self.config.publish_interval_s,
            feed=self._feed_config(),
        )
        self.trainer_proc = self._ctx.Process(
            target=trainer_main,
            args=(setup, self.cmd_q, self.out_q, patch_send, self.duty),
            name=f"trainer-{self.config.name}",
            daemon=True,
        )
        self.trainer_proc.start()
        self._ready = threading.Event()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while self.trainer_proc is not None and not self._ready.wait(0.2):
            if not self.trainer_proc.is_alive():
                raise RuntimeError(f"the trainer process exited ({self.trainer_proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the trainer process did not start within {timeout} s")

    def _partition(self) -> list[placement.PartitionResult]:
        if self.trainer_proc is None:
            return []
        return placement.partition(
            self.config.sysfs_root,
            [os.getpid()],
            [self.trainer_proc.pid],
            cache_pct=int(self.policy["cache_partition_pct"]),
            bandwidth_pct=int(self.policy["bandwidth_partition_pct"]),
            trainer_share=float(self.policy["trainer_share"]),
            trainer_cpus=len(self.plan.trainer_cpus),
        )

    def _partition_report(self) -> list[dict]:
        return [{"mechanism": p.mechanism, "status": p.status, **p.detail} for p in self.partitions]

    # --- the request path --------------------------------------------------------------------

    def predict(
        self, batch: SparseBatch, arrived_at: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """(scores (B,), request ids (B,), factor version served). ``arrived_at`` is a
        time.perf_counter() value when the request was queued before this call."""
        start = time.perf_counter() if arrived_at is None else arrived_at
        with self._inflight_lock:
            self._inflight += 1
            self.qos.observe_queue_depth(self._inflight - 1)
        try:
            with self._infer_lock:
                locked_at = time.perf_counter()
                n = len(batch)
                first = self._next_id
                self._next_id += n
                ids = torch.arange(first, first + n, dtype=torch.int64)
                with torch.no_grad():
                    scores = torch.sigmoid(self.model(batch, delta=self.delta))
                version = self.installed
                self.feed.serve(batch, scores, first, time.time())  # in id order
                service_ms = (time.perf_counter() - locked_at) * 1000.0
        finally:
            with self._inflight_lock:
                self._inflight -= 1
        latency_ms = (time.perf_counter() - start) * 1000.0
        now = time.time()
        self.qos.observe(latency_ms, now)
        self.metrics.served(latency_ms, service_ms, now)
        return scores, ids, version

    def feedback(self, request_id: int, label: float) -> Feedback:
        return self.feed.feedback(request_id, label)

    def feed_counts(self) -> dict[str, int]:
        """The sample cache's counts over every trainer this node ran (the join runs there),
        the feedback answers given here, and the rows lost: dropped by a full ring, or waiting
        in a trainer that stopped or died."""
        counts = dict(self._feed_before)
        for key, value in self._feed_now.items():
            counts[key] = counts.get(key, 0) + value
        return {**counts, **self.feed.counts()}

    def _retire_feed(self) -> None:
        """A new trainer starts a new join: the old one's counts are kept, and the rows it held
        (waiting for labels, joined, in its backlog) are counted as lost."""
        self._trainer_gen += 1
        now = self._feed_now
        lost = now.pop("pending", 0) + now.pop("ready", 0) + now.pop("backlog_rows", 0)
        now.pop("batches", None)
        now["lost"] = now.get("lost", 0) + lost
        for key, value in now.items():
            self._feed_before[key] = self._feed_before.get(key, 0) + value
        self._feed_now = {}

    def _feed_report(self, report: dict[str, Any]) -> None:
        self._feed_now = {
            **report["counts"],
            **report["sizes"],
            "dropped_backlog": report["dropped_backlog"],
            "to_trainer": report["to_trainer"],
        }
        labels, scores = report["quality"]
        self.metrics.joined(labels, scores, time.time())

    @property
    def schema(self) -> StreamSchema:
        from dlrm_core.schema import SparseFeatureSpec

        cfg = self.model.config
        return StreamSchema(
            tuple(
                SparseFeatureSpec(n, s)
                for n, s in zip(cfg.feature_names, cfg.table_sizes, strict=True)
            ),
            tuple(f"dense_{i}" for i in range(cfg.n_dense)),
        )

    def health(self) -> dict[str, Any]:
        return {
            "node": self.config.name,
            "status": "ok",
            "model_version": self.installed,
            "trainer": None if self.trainer_proc is None else self.trainer_proc.is_alive(),
            "throttle": self.qos.last.state if self.qos.last else "running",
        }

    def telemetry_snapshot(self) -> NodeSnapshot:
        """The last second, for the telemetry reporter."""
        now = time.time()
        window = self.metrics.window(now)
        memory = self.trainer_stats.get("memory", {})
        ranks = self.trainer_stats.get("ranks", {})
        tables, total_over, total_base = {}, 0, 0
        for name in self.schema_keys:
            weight = base_weight(self.model, name)
            base_b = weight.numel() * weight.element_size()
            over = memory.get(name, (0, base_b))[0]
            tables[name] = {
                "rank": int(ranks.get(name, 0)),
                "memory_bytes": float(over),
                "memory_pct": 100.0 * over / base_b,
            }
            total_over += over
            total_base += base_b
        events = [self.events.popleft() for _ in range(len(self.events))]
        counts = self.feed_counts()
        dropped = sum(
            counts.get(key, 0)
            for key in (
                "dropped_pending",
                "dropped_ready",
                "dropped_backlog",
                "ring_dropped_rows",
                "lost",
            )
        )
        skipped = self.metrics.skipped
        last_dropped, last_skipped = self._reported
        self._reported = (dropped, skipped)
        state = self.qos.last.state if self.qos.last else "running"
        if self.mode_paused or self.trainer_proc is None:
            state = "paused"
        return NodeSnapshot(
            **window,
            memory_overhead_bytes=float(total_over),
            memory_overhead_pct=100.0 * total_over / total_base,
            trainer_duty=float(self.duty.value) if self.trainer_proc is not None else 0.0,
            throttle=state,
            skipped_batches=skipped - last_skipped,
            dropped_samples=dropped - last_dropped,
            tables=tables,
            cpu_per_core=self.cpu.sample(),
            events=events,
        )

    def _install_newest(self) -> None:
        """Serve the newest complete factor version (installer thread). Its ServingDelta (built by
        the trainer) is copied out of shared memory without the inference lock; only the
        version's base patches and the swap happen under it, between two batches."""
        epoch = self.install_epoch
        if self.shared.version <= self.installed:
            return
        started = time.perf_counter()
        snap = self.shared.read_serving(newer_than=self.installed)
        if snap is None:
            return
        with self._patch_cond:
            if not self._patch_cond.wait_for(
                lambda: (
                    epoch != self.install_epoch
                    or self.patches_applied + len(self._patches) >= snap.aux
                ),
                timeout=2,
            ):
                log.error("base patches for version %d did not arrive; not installed", snap.version)
                return
        copied = time.perf_counter()
        with self._infer_lock:
            locked = time.perf_counter()
            if epoch != self.install_epoch or snap.version <= self.installed:
                return  # a rebase or trainer restart replaced what this version was built on
            with self._patch_cond:
                while self.patches_applied < snap.aux:
                    patch = self._patches.popleft()
                    with torch.no_grad():
                        for name, (ids, rows) in patch.items():
                            weight = base_weight(self.model, name)
                            weight[torch.from_numpy(ids)] = torch.from_numpy(rows)
                    self.patches_applied += 1
            self.delta = snap.delta
            self.installed = snap.version
            released = time.perf_counter()
        self.metrics.installed(snap.version, time.time(), copied - started, released - locked)

    # --- threads -----------------------------------------------------------------------------

    def _join_loop(self) -> None:
        """A node without trainer joins here, for the quality metrics (with a trainer, the
        trainer process joins)."""
        if self.config.trainer:
            return
        feed = Feed(self.rings, self.schema_keys, self.model.config.n_dense, self._feed_config())
        while not self._stop.wait(FEED_PERIOD_S):
            feed.poll()
            self._feed_report(feed.report())

    def _install_loop(self) -> None:
        while not self._stop.wait(INSTALL_POLL_S):
            self._install_newest()

    def _read_trainer(self) -> None:
        while not self._stop.is_set():
            if self.trainer_proc is None:
                time.sleep(0.1)
                continue
            gen = self._trainer_gen
            try:
                kind, payload = self.out_q.get(timeout=0.2)
            except (queue.Empty, OSError, EOFError):
                continue
            if kind == "ready":
                self._ready.set()
            elif kind == "stats":
                self.trainer_stats = payload
                self.events.extend(payload["events"])
                self.metrics.trained(payload, time.time())
                if gen == self._trainer_gen:  # not a late report of a replaced trainer
                    self._feed_report(payload["feed"])
            elif kind == "reply":
                cmd_id, ok, result = payload
                with self._reply_cond:
                    self._replies[cmd_id] = (ok, result)
                    self._reply_cond.notify_all()

    def _read_patches(self) -> None:
        """Base patches from the current trainer; after a restart, the new trainer's pipe."""
        while not self._stop.is_set():
            conn = self.patch_recv if self.trainer_proc is not None else None
            try:
                if conn is None or not conn.poll(0.2):
                    time.sleep(0.05 if conn is None else 0)
                    continue
                patch = conn.recv()
            except (OSError, EOFError):  # the trainer is gone; a new pipe comes with the next
                time.sleep(0.1)
                continue
            with self._patch_cond:
                if conn is self.patch_recv:  # not a late message of a replaced trainer
                    self._patches.append(patch)
                    self._patch_cond.notify_all()

    def _qos_loop(self) -> None:
        while not self._stop.wait(self.config.qos_period_s):
            decision = self.qos.step()
            for event in self.qos.drain_events():
                self.events.append(event)
            if self.trainer_proc is None:
                continue
            if self.mode_paused:
                self.duty.value = 0.0
            elif self.config.qos:
                self.duty.value = decision.effective_duty
            else:
                self.duty.value = 0.0 if self.qos.operator_paused else 1.0

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.config.snapshot_interval_s):
            if self.trainer_proc is not None:
                try:
                    self.snapshot()
                except Exception:
                    log.exception("periodic snapshot failed")

    def trainer_call(self, op: str, timeout: float = 60.0, **kwargs: Any) -> Any:
        if self.trainer_proc is None or not self.trainer_proc.is_alive():
            raise RuntimeError("the trainer process is not running")
        cmd_id = next(self._cmd_ids)
        self.cmd_q.put({"op": op, "id": cmd_id, **kwargs})
        with self._reply_cond:
            if not self._reply_cond.wait_for(lambda: cmd_id in self._replies, timeout):
                raise TimeoutError(f"trainer did not answer {op} within {timeout} s")
            ok, result = self._replies.pop(cmd_id)
        if not ok:
            raise RuntimeError(result)
        return result

    def stop(self) -> None:
        self._stop.set()
        self._stop_trainer()
        for thread in self._threads:
            thread.join(timeout=2)
        self.rings.close()
        shutil.rmtree(self.shm_dir, ignore_errors=True)
        gc.callbacks.remove(self.metrics.gc_callback)
        gc.unfreeze()
        sys.setswitchinterval(self._switch_interval)
        if self.config.pin:
            cpus, threads = self._unpinned
            placement.pin_process(cpus)
            torch.set_num_threads(threads)

    def _stop_trainer(self) -> None:
        proc, self.trainer_proc = self.trainer_proc, None
        if proc is None:
            return
        self.cmd_q.put({"op": "stop", "id": 0})
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _remove_stale_segments(root: Path, name: str) -> None:
    """Shared-memory directories of this node left by a process that died (kill -9)."""
    for path in root.glob(f"liveupdate-{name}-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            log.info("removing the stale shared memory of a dead node process: %s", path)
            shutil.rmtree(path, ignore_errors=True)
        except PermissionError:  # alive, another user's
            pass
