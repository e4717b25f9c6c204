"""The node's control operations, composed from its parts: what the Celery tasks call over the
control socket (one method per operation declared in nodeworker.protocol.operations, with the
declared arguments as keywords), and the trainer's lifecycle the node itself runs
(start_trainer, supervise). Bad arguments raise InvalidRequest with field-level messages; each
operation returns a JSON object saying what it did.

Where the base changes: ``rebase`` and ``supervise`` rewrite the base tables and then
``installer.forget_versions`` (the version installer's epoch), both under the inference lock;
``apply_delta`` (with the other operations the training cluster calls, nodeworker.cluster_ops)
writes rows into the base under it (a delta rebase also the MLPs, after the trainer dropped
those rows' corrections). Where a policy takes effect:
``NodeState.adopt_policy`` (called by apply_policy), which persists it with the version, as
``NodeState.adopt_checkpoint`` (called by rebase) does the base.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from dlrm_core.checkpoint import CheckpointError, load_model
from nodeworker import placement, protocol
from nodeworker.checkpoint_files import CheckpointFiles
from nodeworker.cluster_ops import ClusterOperations
from nodeworker.control_socket import InvalidRequest
from nodeworker.inference import InferencePath
from nodeworker.node_events import NodeEvents
from nodeworker.node_state import NodeState
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.qos import QosController
from nodeworker.runtime_config import RuntimeConfig
from nodeworker.shared_memory import SharedFactors, TableCapacity, write_base_tables
from nodeworker.snapshots import (
    SnapshotDirectory,
    SnapshotMeta,
    apply_patch_files,
    folded_rows,
    table_files_error,
)
from nodeworker.trainer_client import TrainerClient
from nodeworker.trainer_proc import TrainerSetup
from nodeworker.tuned_top import tuning_error
from nodeworker.version_installer import VersionInstaller

log = logging.getLogger(__name__)


class NodeOperations(ClusterOperations):
    def __init__(
        self,
        config: RuntimeConfig,
        state: NodeState,
        inference: InferencePath,
        installer: VersionInstaller,
        trainer: TrainerClient,
        qos: QosController,
        snapshots: SnapshotDirectory,
        events: NodeEvents,
        shared: SharedFactors,
        capacities: dict[str, TableCapacity],
    ) -> None:
        self.config = config
        self.state = state
        self.inference = inference
        self.installer = installer
        self.trainer = trainer
        self.qos = qos
        self.snapshots = snapshots
        self.events = events
        self.shared = shared
        self.capacities = capacities
        self.tables = inference.model.config.feature_names

    # --- the trainer's lifecycle -------------------------------------------------------------

    def start_trainer(self, restore_dir: Path | None) -> None:
        """Start the trainer (none running) on the current base, policy and placement."""
        setup = TrainerSetup(
            checkpoint=self.state.checkpoint,
            shm_dir=str(self.shared.dir),
            capacities=self.capacities,
            policy=self.state.policy,
            cpus=self.state.plan.trainer_cpus if self.config.pin else (),
            start_version=self.shared.version,
            restore_dir=str(restore_dir) if restore_dir else None,
            publish_interval_s=self.config.publish_interval_s,
            feed=self.config.feed_config(),
        )
        duty = 0.0 if self.state.mode_paused else self.qos.duty
        self.trainer.start(setup, duty, self.installer.epoch)

    def partition(self) -> None:
        """Split the cache and memory bandwidth between inference and the trainer process."""
        pid = self.trainer.pid
        self.state.partitions = (
            []
            if pid is None
            else placement.partition(
                self.config.sysfs_root,
                [os.getpid()],
                [pid],
                cache_pct=self.state.policy.cache_partition_pct,
                bandwidth_pct=self.state.policy.bandwidth_partition_pct,
                trainer_share=self.state.policy.trainer_share,
                trainer_cpus=len(self.state.plan.trainer_cpus),
            )
        )

    def supervise(self) -> bool:
        """Restart a dead trainer from the latest snapshot (called periodically by the node
        service). The base goes back to the checkpoint plus the snapshot's folded rows and the
        node serves the bare base until the restored version arrives, so base and factors
        always match. Returns True when it restarted the trainer."""
        exitcode = self.trainer.reap()
        if exitcode is None:
            return False
        log.error("trainer process exited (%s); restarting from the latest snapshot", exitcode)
        restore = self.snapshots.restorable(self.state.checkpoint, self.tables)
        self._back_to_checkpoint(restore)
        self.start_trainer(restore)
        self.events.add(
            "snapshot", {"trainer_restarted": True, "restored": restore.name if restore else None}
        )
        return True

    # --- the control operations --------------------------------------------------------------

    def apply_policy(
        self,
        policy: dict[str, Any],
        policy_name: str | None = None,
        version: int | None = None,
        overrides: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``policy`` as people set it, ``overrides`` the plane's automatic tightenings of it
        (protocol.validate_overrides): the node runs the stricter of the two."""
        clean, errors = protocol.validate_policy(policy)
        kept, override_errors = protocol.validate_overrides(overrides or {})
        errors = {f"policy.{k}": v for k, v in errors.items()}
        errors |= {f"overrides.{k}": v for k, v in override_errors.items()}
        version_error = protocol_telemetry.policy_version_error(version)
        if version_error:
            errors["version"] = version_error
        if clean is not None and (top := tuning_error(self.inference.model.config, clean)):
            errors["policy.lr_top"] = top  # the bounds hold, this node's budget does not
        if clean is None or kept is None or errors:
            raise InvalidRequest(errors)
        self.state.adopt_policy(clean, version, kept)
        in_force = self.state.policy
        self.qos.set_policy(in_force.sla_p99_ms, in_force.max_trainer_duty)
        plan = self.state.plan
        result: dict[str, Any] = {
            "mode": in_force.mode,
            "overrides": kept,
            "placement": plan.as_dict(),
        }
        if self.config.pin:
            placement.pin_process(plan.inference_cpus)
            self.trainer.pin(plan.trainer_cpus)
        ranks = self.trainer.set_policy(in_force)
        if ranks is not None:
            result["ranks"] = ranks
            self.partition()
            result["partitions"] = self.state.partition_report()
        detail = {"name": policy_name, "version": version, **result}
        self.events.add("policy", detail)
        return detail

    def pause(self) -> dict[str, Any]:
        self.qos.set_operator_pause(True)
        return {"throttle": "paused"}

    def resume(self) -> dict[str, Any]:
        self.qos.set_operator_pause(False)
        return {
            "throttle": "paused" if self.state.mode_paused else "running",
            "mode": self.state.policy.mode,
        }

    def snapshot(self) -> dict[str, Any]:
        """Persist the factors (and the rows folded into the base) under data_dir/snapshots,
        with the node's AUC and each table's rank and folded rows at the time."""
        directory = self.snapshots.new()
        taken = self.trainer.snapshot(str(directory))
        now = time.time()
        stats = self.trainer.last_stats
        ranks = stats.ranks if stats else {}
        rows = folded_rows(directory, self.tables)
        tables = {t: {"rank": int(ranks[t]), "rows": rows[t]} for t in self.tables if t in ranks}
        auc = self.inference.metrics.window(now)["auc"]
        meta = SnapshotMeta(self.state.checkpoint, taken.version, now, auc, tables)
        self.snapshots.commit(directory, meta)
        detail = {"snapshot": directory.name, **meta.as_dict(), "digests": taken.digests}
        self.events.add("snapshot", detail)
        return detail

    def list_snapshots(self) -> dict[str, Any]:
        """The snapshots kept on disk, newest first; ``restorable``: taken on the base
        checkpoint in force (a snapshot of another base cannot be restored onto this one)."""
        return {
            "checkpoint": self.state.checkpoint,
            "snapshots": [
                {
                    "name": name,
                    **meta.as_dict(),
                    "restorable": meta.checkpoint == self.state.checkpoint,
                }
                for name, meta in self.snapshots.listing()
            ],
        }

    def restore_snapshot(
        self, name: str, min_auc: float | None = None, reason: str | None = None
    ) -> dict[str, Any]:
        """Serve a snapshot's factors again: the trainer restarts from it on the checkpoint's
        base plus the snapshot's folded rows, as a crash restart does (supervise). ``base``: the
        bare base, no factors; ``last_good``: the newest snapshot taken with AUC >= min_auc,
        else the bare base (the watchdog's automatic rollback)."""
        if not self.config.trainer:
            raise InvalidRequest({"name": "This node runs no trainer: no factors to restore."})
        chosen = (
            self.snapshots.last_good(self.state.checkpoint, min_auc)
            if name == "last_good"
            else name
        )
        restore = None if chosen in (None, "base") else self._restorable(str(chosen))
        self.trainer.stop()
        self._back_to_checkpoint(restore)
        self.snapshots.make_latest(restore.name if restore else None)  # a crash resumes it
        self.start_trainer(restore)
        self.trainer.wait_ready()
        detail = {"restored": restore.name if restore else "base", "asked": name, "reason": reason}
        self.events.add("snapshot", detail)
        return detail

    def _back_to_checkpoint(self, restore: Path | None) -> None:
        """Inference back to the checkpoint, MLPs too (a delta rebase's are gone with its rows:
        the next trainer starts on the checkpoint's), plus ``restore``'s folded rows; it serves
        the bare base until that trainer publishes."""
        checkpoint = load_model(self.state.checkpoint)
        model = self.inference.model
        with self.inference.exclusive:
            write_base_tables(checkpoint, self.shared.dir)
            if restore is not None:
                apply_patch_files(model, restore, self.tables)
            model.dense_arch.load_state_dict(checkpoint.dense_arch.state_dict())
            model.over_arch.load_state_dict(checkpoint.over_arch.state_dict())
            self.installer.forget_versions()

    def _restorable(self, name: str) -> Path:
        directory = self.snapshots.root / name
        try:
            meta = SnapshotMeta.read(directory)
        except (OSError, ValueError, KeyError, TypeError):
            raise InvalidRequest({"name": "No such snapshot on this node."}) from None
        if meta.checkpoint != self.state.checkpoint:
            raise InvalidRequest({"name": "Taken on another base checkpoint than the node runs."})
        error = table_files_error(directory, self.tables)
        if error:
            raise InvalidRequest({"name": f"Its files are damaged: {error}"})
        return directory

    def rebase(self, checkpoint: dict[str, Any], keep_factors: bool = False) -> dict[str, Any]:
        files = CheckpointFiles.for_node(self.config, self.inference.model)
        location, checksum = files.checked(checkpoint)  # stat'ed, streamed, under its directory
        try:
            new = load_model(location, expected=self.inference.model.config)
        except (CheckpointError, ValueError) as exc:
            raise InvalidRequest({"checkpoint": str(exc)}) from exc
        kept = None
        if keep_factors and self.trainer.running:
            kept = self.snapshots.new("rebase")
            self.trainer.snapshot(str(kept))
            for patch in kept.glob("*.patch"):  # the new base supersedes the old folds
                patch.unlink()
        had_trainer = self.trainer.running
        self.trainer.stop()
        model = self.inference.model
        with self.inference.exclusive:
            write_base_tables(new, self.shared.dir)  # in place: the mapped tables see it
            model.dense_arch.load_state_dict(new.dense_arch.state_dict())
            model.over_arch.load_state_dict(new.over_arch.state_dict())
            self.installer.forget_versions()
        self.state.adopt_checkpoint(location, checksum)
        if had_trainer:
            self.start_trainer(kept)
            self.trainer.wait_ready()
        detail = {"checkpoint": checkpoint, "keep_factors": bool(keep_factors)}
        self.events.add("rebase", detail)
        return detail

    def health(self) -> dict[str, Any]:
        return {
            "node": self.config.name,
            "status": "ok",
            "model_version": self.inference.version,
            "trainer": self.trainer.alive if self.trainer.running else None,
            "throttle": self.qos.last.state if self.qos.last else "running",
        }

    def feed_counts(self) -> dict[str, int]:
        """The join's counts over every trainer this node ran (the join runs there), the
        feedback answers given here, and the rows lost: dropped by a full ring, or waiting
        in a trainer that stopped or died."""
        return {**self.trainer.join.totals(), **self.inference.feed.counts()}

    def status(self) -> dict[str, Any]:
        return {
            **self.health(),
            "policy": self.state.policy.wire(),
            "policy_applied": self.state.applied.policy is not None,  # else the start-up one
            "overrides": self.state.applied.overrides,
            "placement": self.state.plan.as_dict(),
            "partitions": self.state.partition_report(),
            "cache": self.feed_counts(),
        }
