"""NodeRuntime: the long-lived inference-node process, composed of its parts.

This process serves (HTTP threads -> ``predict``) on the inference cores and appends each served
request and each feedback label once to shared-memory rings (nodeworker.feed). The trainer
process, on the trainer cores, joins them in its sample cache, learns from the joined rows under
the QoS duty cycle and publishes factor versions into shared memory, each with its serving
layout built there; a node without a trainer joins them in a thread, for the quality metrics.
An installer thread copies the newest complete version (never a torn one) out off the request
path and swaps it in between two batches.

The parts: InferencePath (nodeworker.inference: the request path), a TrainerClient
(nodeworker.trainer_client: the trainer process, or NoTrainer), the VersionInstaller
(nodeworker.version_installer: the patch-ordering and epoch protocol), SnapshotDirectory
(nodeworker.snapshots), NodeState (the policy, placement and base checkpoint in force),
NodeOperations (nodeworker.node_operations: the control operations, composed from the others)
and TelemetryWindow (nodeworker.telemetry_window). This module builds them and runs the
node's loops.

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
import logging
import os
import shutil
import sys
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.checkpoint import CheckpointError, load_model, save_model
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.schema import SparseFeatureSpec, StreamSchema
from nodeworker import placement, protocol
from nodeworker.feed import Feed, FeedWriter
from nodeworker.feed_rings import FeedRings
from nodeworker.inference import InferencePath
from nodeworker.node_budget import NodeBudget, capacity_budget, node_budget, node_table_floor
from nodeworker.node_events import NodeEvents
from nodeworker.node_operations import NodeOperations
from nodeworker.node_state import APPLIED_FILE, AppliedState, NodeState
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.qos import QosConfig, QosController
from nodeworker.runtime_config import RuntimeConfig
from nodeworker.runtime_metrics import MeasuredMemory, RuntimeMetrics
from nodeworker.sample_cache import Feedback
from nodeworker.shared_memory import (
    SharedFactors,
    TableCapacity,
    map_base_tables,
    write_base_tables,
)
from nodeworker.snapshots import SnapshotDirectory, apply_patch_files
from nodeworker.telemetry import NodeSnapshot
from nodeworker.telemetry_window import TelemetryWindow
from nodeworker.trainer_client import NoTrainer, ProcessTrainerClient, TrainerClient
from nodeworker.version_installer import VersionInstaller

log = logging.getLogger(__name__)

MAX_UNTRAINED_SHOWN = 8  # tables whose reason an event carries (its detail is bounded)
GIL_SWITCH_INTERVAL_S = 0.0005

__all__ = ["NodeRuntime", "RuntimeConfig", "build_fresh_checkpoint"]


def build_fresh_checkpoint(schema: StreamSchema, path: Path, seed: int = 0) -> str:
    """A freshly initialised DLRM for ``schema`` saved as the base checkpoint."""
    torch.manual_seed(seed)
    save_model(path, DLRM(DLRMConfig.from_schema(schema)))
    return str(path)


class NodeRuntime:
    def __init__(self, config: RuntimeConfig):
        self.config = config
        self.data_dir = Path(config.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.events = NodeEvents()
        self.state = _restored_state(config, self.data_dir)
        clean = self.state.policy
        # stop() gives the calling thread its cpus, torch threads and GIL interval back
        self._unpinned = (tuple(os.sched_getaffinity(0)), torch.get_num_threads())
        self._switch_interval = sys.getswitchinterval()
        if config.pin:  # before the tables exist: first touch puts them on this node
            placement.pin_process(self.state.plan.inference_cpus)
            placement.configure_torch_threads(self.state.plan.inference_threads)
        model = _load_base(self.state, config)
        self.schema = _schema_of(model)  # what requests must carry (a rebase keeps it)
        self.shm_dir = _share_base_tables(model, config, self.data_dir)
        self.snapshots = SnapshotDirectory(self.data_dir / "snapshots", self.events)
        tables = model.config.feature_names
        self.restore_dir = self.snapshots.restorable(self.state.checkpoint, tables)
        if self.restore_dir:
            apply_patch_files(model, self.restore_dir, tables)
        capacities = self._trained_capacities(model, clean)
        self.shared = SharedFactors(self.shm_dir, capacities, create=True)
        self.rings = FeedRings.open(self.shm_dir, create=True)
        self.qos = QosController(
            QosConfig(
                sla_p99_ms=clean.sla_p99_ms,
                window_s=config.qos_window_s,
                max_duty=clean.max_trainer_duty,
            )
        )
        self.metrics = RuntimeMetrics()
        feed = FeedWriter(self.rings, config.label_window_s, config.cache_max_pending)
        self.inference = InferencePath(model, feed, self.qos, self.metrics)
        self.installer = VersionInstaller(self.inference, self.shared, self.metrics)
        self.trainer = self._trainer_client(model)
        self.operations = NodeOperations(
            config,
            self.state,
            self.inference,
            self.installer,
            self.trainer,
            self.qos,
            self.snapshots,
            self.events,
            self.shared,
            capacities,
        )
        self.telemetry = TelemetryWindow(
            model,
            self.metrics,
            self.events,
            self.trainer,
            self.qos,
            self.state,
            self.operations.feed_counts,
            MeasuredMemory(self.shm_dir),
        )
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _trained_capacities(self, model: DLRM, policy: protocol.Policy) -> dict[str, TableCapacity]:
        """The shared slots of the tables the node's budget trains. The others are told, with
        the reason, in the log and an event (a node whose tables are too small for even one
        table's floor trains nothing, and says so)."""
        budget = node_budget(model.config, policy)
        names = sorted(budget.untrained)
        for name in names:
            log.warning("table %r is not trained: %s", name, budget.untrained[name])
        shown = {name: budget.untrained[name] for name in names[:MAX_UNTRAINED_SHOWN]}
        detail = {"memory_budget_bytes": budget.total, "trained": sorted(budget.tables),
                  "untrained": shown, "untrained_count": len(names)}  # fmt: skip
        if names:
            self.events.add("policy", detail)
        return _capacities(model, policy, budget)

    def _trainer_client(self, model: DLRM) -> TrainerClient:
        if self.config.trainer:
            return ProcessTrainerClient(
                self.config.name, self.metrics, self.events, self.installer.receive
            )
        cfg = model.config
        feed = Feed(self.rings, cfg.feature_names, cfg.n_dense, self.config.feed_config())
        return NoTrainer(self.metrics, feed)

    def start(self) -> NodeRuntime:
        self.operations.start_trainer(self.restore_dir)
        gc.collect()
        gc.freeze()
        gc.callbacks.append(self.metrics.gc_callback)
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        for name, target in (
            ("installer", self._install_loop),
            ("qos", self._qos_loop),
            ("snapshots", self._snapshot_loop),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.operations.partition()
        self.events.add(
            "policy",
            {"placement": self.state.plan.as_dict(), "partitions": self.state.partition_report()},
        )
        return self

    def wait_ready(self, timeout: float = 120.0) -> None:
        self.trainer.wait_ready(timeout)

    # --- what the HTTP endpoint and the replayer call (nodeworker.http.PredictService) ------

    def predict(
        self, batch: SparseBatch, arrived_at: float | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.inference.predict(batch, arrived_at)

    def feedback(self, request_id: int, label: float) -> Feedback:
        return self.inference.feed.feedback(request_id, label)

    def health(self) -> dict[str, Any]:
        return self.operations.health()

    def running_state(self) -> protocol_telemetry.RunningState:
        """What the node runs, for every telemetry batch (the plane reconciles on it)."""
        return self.state.applied.running()

    def telemetry_snapshot(self) -> NodeSnapshot:
        """The last second, for the telemetry reporter."""
        return self.telemetry.take()

    # --- the node's loops --------------------------------------------------------------------

    def _install_loop(self) -> None:
        self.installer.run(self._stop)

    def _qos_loop(self) -> None:
        while not self._stop.wait(self.config.qos_period_s):
            decision = self.qos.step()
            self.events.extend(self.qos.drain_events())
            if self.state.mode_paused:
                duty = 0.0
            elif self.config.qos:
                duty = decision.effective_duty
            else:
                duty = 0.0 if self.qos.operator_paused else 1.0
            self.trainer.set_duty(duty)

    def _snapshot_loop(self) -> None:
        while not self._stop.wait(self.config.snapshot_interval_s):
            if self.trainer.running:
                try:
                    self.operations.snapshot()
                except Exception:
                    log.exception("periodic snapshot failed")

    def stop(self) -> None:
        self._stop.set()
        self.trainer.close()
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


def _restored_state(config: RuntimeConfig, data_dir: Path) -> NodeState:
    """The node's state: what the control plane applied last (persisted in the data dir) over
    the start-up policy and checkpoint, so a restart does not undo a policy or a rebase."""
    applied = AppliedState.load(data_dir / APPLIED_FILE)
    policy = applied.policy_in_force() or config.policy
    checkpoint = applied.checkpoint or config.checkpoint
    topology = placement.read_topology(config.sysfs_root)
    return NodeState(policy, topology, checkpoint, data_dir / APPLIED_FILE, applied)


def _load_base(state: NodeState, config: RuntimeConfig) -> DLRM:
    """The base model to serve: the rebased checkpoint the node restarted into, else (it no
    longer loads) the start-up checkpoint, which the control plane then rebases again."""
    if state.checkpoint != config.checkpoint:
        try:
            return _load_for_inference(state.checkpoint)
        except (CheckpointError, ValueError, OSError) as exc:
            log.warning("rebased checkpoint %s not restored: %s", state.checkpoint, exc)
            state.checkpoint = config.checkpoint
            state.applied = replace(state.applied, checkpoint=None, checkpoint_checksum=None)
    return _load_for_inference(config.checkpoint)


def _load_for_inference(checkpoint: str) -> DLRM:
    model = load_model(checkpoint)
    model.eval()
    model.requires_grad_(False)
    return model


def _share_base_tables(model: DLRM, config: RuntimeConfig, data_dir: Path) -> Path:
    """Move the model's base tables into shared memory (the trainer maps them too); returns
    this process's shared-memory directory."""
    # tmpfs when the host has it; a file in the data dir is shared through the page cache
    shm_root = config.shm_root if config.shm_root.is_dir() else data_dir / "shm"
    _remove_stale_segments(shm_root, config.name)
    shm_dir = shm_root / f"liveupdate-{config.name}-{os.getpid()}"
    write_base_tables(model, shm_dir)
    map_base_tables(model, shm_dir, shared=True)
    return shm_dir


def _schema_of(model: DLRM) -> StreamSchema:
    cfg = model.config
    return StreamSchema(
        tuple(
            SparseFeatureSpec(n, s) for n, s in zip(cfg.feature_names, cfg.table_sizes, strict=True)
        ),
        tuple(f"dense_{i}" for i in range(cfg.n_dense)),
    )


def _capacities(
    model: DLRM, policy: protocol.Policy, budget: NodeBudget
) -> dict[str, TableCapacity]:
    """The shared factor slots of the tables the node's budget lets the trainer train, each
    sized for the most budget any policy gives it (sparse: unused room costs nothing)."""
    cfg = model.config
    floor = node_table_floor(cfg, policy)
    rows = dict(zip(cfg.feature_names, cfg.table_sizes, strict=True))
    dim = cfg.embedding_dim
    return {
        name: TableCapacity.for_budget(capacity_budget(rows[name] * dim * 4, floor), dim, dim)
        for name in budget.tables
    }


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
