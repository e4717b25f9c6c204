"""The control ops of NodeRuntime (what the node's Celery tasks call over the control channel):
apply_policy, pause, resume, snapshot, rebase, apply_delta, status. Bad arguments raise
InvalidRequest with field-level messages; each op returns a JSON object saying what it did."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from dlrm_core.checkpoint import CheckpointError, load_model, read_container
from dlrm_core.live_embedding import FACTORS_FORMAT_VERSION, FACTORS_KIND
from nodeworker import placement, protocol
from nodeworker.control import InvalidRequest
from nodeworker.shared_memory import base_weight, write_base_tables
from nodeworker.trainer_proc import PATCH_KIND, read_patch

if TYPE_CHECKING:
    from nodeworker.runtime import NodeRuntime

log = logging.getLogger(__name__)

KEEP_SNAPSHOTS = 3


def _event(kind: str, detail: dict[str, Any]) -> dict[str, Any]:
    return {"kind": kind, "ts": time.time(), "detail": detail}


def _snapshot_error(directory: Path, tables: tuple[str, ...]) -> str | None:
    """Why the factor and patch files of a snapshot cannot be restored, or None."""
    for table in tables:
        for suffix, kind, version in (
            (".factors", FACTORS_KIND, FACTORS_FORMAT_VERSION),
            (".patch", PATCH_KIND, 1),
        ):
            path = directory / f"{table}{suffix}"
            if not path.exists():
                continue
            try:
                meta, _ = read_container(path, kind, version)
            except CheckpointError as exc:
                return str(exc)
            if meta.get("table") != table:
                return f"{path}: holds table {meta.get('table')!r}, expected {table!r}"
    return None


class RuntimeControl:
    def apply_policy(
        self: NodeRuntime,
        policy: dict[str, Any],
        policy_name: str | None = None,
        version: int | None = None,
    ) -> dict[str, Any]:
        clean, errors = protocol.validate_policy(policy)
        if errors:
            raise InvalidRequest({f"policy.{k}": v for k, v in errors.items()})
        self.policy = clean
        self.qos.set_policy(float(clean["sla_p99_ms"]), float(clean["max_trainer_duty"]))
        self.mode_paused = clean["mode"] != "liveupdate"
        self.plan = self._plan()
        result: dict[str, Any] = {"mode": clean["mode"], "placement": self.plan.as_dict()}
        if self.config.pin:
            placement.pin_process(self.plan.inference_cpus)
        if self.trainer_proc is not None:
            if self.config.pin:
                self.trainer_call("pin", cpus=list(self.plan.trainer_cpus))
            result["ranks"] = self.trainer_call("policy", policy=clean)["ranks"]
            self.partitions = self._partition()
            result["partitions"] = self._partition_report()
        detail = {"name": policy_name, "version": version, **result}
        self.events.append(_event("policy", detail))
        return detail

    @property
    def snapshots_dir(self: NodeRuntime) -> Path:
        return self.data_dir / "snapshots"

    def _restorable_snapshot(self: NodeRuntime) -> Path | None:
        """The latest intact snapshot taken on this base checkpoint (a crash restart resumes
        it). A snapshot whose files fail their checksum is refused with an event saying why,
        and the one before it is used: a corrupt file must not keep the trainer from starting."""
        pointer = self.snapshots_dir / "LATEST"
        if not pointer.exists():
            return None
        latest = pointer.read_text().strip()
        candidates = sorted(
            (d.name for d in self.snapshots_dir.glob("snap-*") if d.name <= latest), reverse=True
        )
        for name in candidates or [latest]:
            directory = self.snapshots_dir / name
            try:
                meta = json.loads((directory / "snapshot.json").read_text())
            except (OSError, ValueError):
                log.warning("snapshot %s is unreadable; trying an older one", directory)
                continue
            if meta.get("checkpoint") != str(self.checkpoint):
                log.info("snapshot %s belongs to another base checkpoint; not restored", directory)
                return None
            error = _snapshot_error(directory, self.schema_keys)
            if error:
                log.error("snapshot %s refused: %s", directory, error)
                self.events.append(_event("snapshot", {"refused": name, "error": error}))
                continue
            self.events.append(_event("snapshot", {"restored": name, **meta}))
            return directory
        return None

    def _apply_patch_files(self: NodeRuntime, directory: Path) -> None:
        for name in self.schema_keys:
            path = directory / f"{name}.patch"
            if path.exists():
                ids, rows = read_patch(path)
                with torch.no_grad():
                    base_weight(self.model, name)[ids] = rows

    def _forget_trainer_versions(self: NodeRuntime) -> None:
        """Serve the bare base until a new trainer publishes: the old trainer's versions, the
        one the installer may be building and its late patches never serve again. Called under
        the inference lock, after the base tables changed."""
        self.delta = None
        self.installed = self.shared.version
        with self._patch_cond:
            self.install_epoch += 1
            self._patches.clear()
            self.patches_applied = 0
            self.patch_recv = None
            self._patch_cond.notify_all()

    def supervise(self: NodeRuntime) -> bool:
        """Restart a dead trainer from the latest snapshot (called periodically by the node
        command). The base goes back to the checkpoint plus the snapshot's folded rows and the
        node serves the bare base until the restored version arrives, so base and factors
        always match. Returns True when it restarted the trainer."""
        proc = self.trainer_proc
        if not self.config.trainer or proc is None or proc.is_alive():
            return False
        log.error("trainer process exited (%s); restarting from the latest snapshot", proc.exitcode)
        self.trainer_proc = None
        restore = self._restorable_snapshot()
        with self._infer_lock:
            write_base_tables(load_model(self.checkpoint), self.shm_dir)
            if restore:
                self._apply_patch_files(restore)
            self._forget_trainer_versions()
        self._start_trainer(restore)
        self.events.append(
            _event(
                "snapshot",
                {"trainer_restarted": True, "restored": restore.name if restore else None},
            )
        )
        return True

    def pause(self: NodeRuntime) -> dict[str, Any]:
        self.qos.set_operator_pause(True)
        return {"throttle": "paused"}

    def resume(self: NodeRuntime) -> dict[str, Any]:
        self.qos.set_operator_pause(False)
        return {
            "throttle": "running" if not self.mode_paused else "paused",
            "mode": self.policy["mode"],
        }

    def snapshot(self: NodeRuntime) -> dict[str, Any]:
        """Persist the factors (and the rows folded into the base) under data_dir/snapshots."""
        name = f"snap-{time.time_ns()}"
        directory = self.snapshots_dir / name
        result = self.trainer_call("snapshot", directory=str(directory))
        meta = {"checkpoint": str(self.checkpoint), "version": result["version"], "ts": time.time()}
        (directory / "snapshot.json").write_text(json.dumps(meta))
        pointer = self.snapshots_dir / "LATEST"
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(name)
        os.replace(tmp, pointer)  # the new snapshot is complete before it becomes the latest
        for old in sorted(self.snapshots_dir.glob("snap-*"))[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(old, ignore_errors=True)
        detail = {"snapshot": name, **meta, "digests": result["digests"]}
        self.events.append(_event("snapshot", detail))
        return detail

    def rebase(
        self: NodeRuntime, checkpoint: dict[str, Any], keep_factors: bool = False
    ) -> dict[str, Any]:
        location = checkpoint.get("location") if isinstance(checkpoint, dict) else None
        if not isinstance(location, str) or not Path(location).is_file():
            raise InvalidRequest({"checkpoint.location": "No such checkpoint file on this node."})
        want = str(checkpoint.get("checksum") or "").removeprefix("sha256:")
        if want:
            data = Path(location).read_bytes()
            # the control plane's sha256: of the whole file, or the digest save_model returned
            if want not in (hashlib.sha256(data).hexdigest(), data[-32:].hex()):
                raise InvalidRequest({"checkpoint.checksum": "Does not match the file."})
        try:
            new = load_model(location, expected=self.model.config)
        except (CheckpointError, ValueError) as exc:
            raise InvalidRequest({"checkpoint": str(exc)}) from exc
        kept = None
        if keep_factors and self.trainer_proc is not None:
            kept = self.snapshots_dir / f"rebase-{time.time_ns()}"
            self.trainer_call("snapshot", directory=str(kept))
            for patch in kept.glob("*.patch"):  # the new base supersedes the old folds
                patch.unlink()
        had_trainer = self.trainer_proc is not None
        self._stop_trainer()
        with self._infer_lock:
            write_base_tables(new, self.shm_dir)  # in place: the mapped tables see it
            self.model.dense_arch.load_state_dict(new.dense_arch.state_dict())
            self.model.over_arch.load_state_dict(new.over_arch.state_dict())
            self._forget_trainer_versions()
        self.checkpoint = location
        if had_trainer:
            self._start_trainer(kept)
            self.wait_ready()
        detail = {"checkpoint": checkpoint, "keep_factors": bool(keep_factors)}
        self.events.append(_event("rebase", detail))
        return detail

    def apply_delta(self: NodeRuntime, deltas: dict[str, Any]) -> dict[str, Any]:
        """Delta-sync baseline: rows from the training cluster replace the base rows."""
        errors: dict[str, str] = {}
        parsed = {}
        dim = self.model.config.embedding_dim
        for table, delta in deltas.items():
            if table not in self.schema_keys:
                errors[f"deltas.{table}"] = "Unknown table."
                continue
            try:
                rows = torch.as_tensor(delta["rows"], dtype=torch.int64)
                values = torch.as_tensor(delta["values"], dtype=torch.float32)
            except (KeyError, TypeError, ValueError):
                errors[f"deltas.{table}"] = 'Must be {"rows": [N ids], "values": [N x D]}.'
                continue
            n_rows = base_weight(self.model, table).shape[0]
            if rows.dim() != 1 or values.shape != (rows.shape[0], dim):
                errors[f"deltas.{table}"] = f"Need N row ids and N x {dim} values."
            elif rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
                errors[f"deltas.{table}.rows"] = f"Row ids must be in [0, {n_rows})."
            elif not bool(torch.isfinite(values).all()):
                errors[f"deltas.{table}.values"] = "Values must be finite."
            else:
                parsed[table] = (rows, values)
        if errors:
            raise InvalidRequest(errors)
        with self._infer_lock, torch.no_grad():
            for table, (rows, values) in parsed.items():
                base_weight(self.model, table)[rows] = values
        return {"tables": {t: int(r.numel()) for t, (r, _) in parsed.items()}}

    def status(self: NodeRuntime) -> dict[str, Any]:
        return {
            **self.health(),
            "policy": self.policy,
            "placement": self.plan.as_dict(),
            "partitions": self._partition_report(),
            "cache": self.feed_counts(),
        }
