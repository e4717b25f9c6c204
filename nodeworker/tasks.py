"""The node's control tasks: thin, they validate their arguments and hand them to the running
NodeRuntime over the control channel. The runtime itself is never a task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from nodeworker import protocol
from nodeworker.celery_app import app
from nodeworker.control_socket import ControlClient, ControlError


def control_socket() -> Path:
    """NODE_CONTROL_SOCKET, else the runtime's default under $LIVEUPDATE_DATA_DIR."""
    explicit = os.environ.get("NODE_CONTROL_SOCKET")
    if explicit:
        return Path(explicit)
    data = Path(os.environ.get("LIVEUPDATE_DATA_DIR") or "var").resolve()
    return data / f"node-{os.environ.get('NODE_NAME', '')}" / "control.sock"


def _call(task, op: str, **kwargs: Any) -> Any:
    try:
        return ControlClient(control_socket()).call(op, **kwargs)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        # The runtime is (re)starting: try again shortly, then fail with the reason.
        raise task.retry(exc=exc, countdown=2, max_retries=5) from exc


@app.task(name=protocol.TASK_APPLY_POLICY, bind=True, throws=(ControlError,))
def apply_policy(
    self,
    policy: dict,
    policy_name: str | None = None,
    version: int | None = None,
    overrides: dict | None = None,
):
    clean, errors = protocol.validate_policy(policy)
    kept, override_errors = protocol.validate_overrides(overrides or {})
    if clean is None or kept is None:
        raise ControlError("invalid policy", {**errors, **override_errors})
    return _call(
        self,
        "apply_policy",
        policy=clean.wire(),
        policy_name=policy_name,
        version=version,
        overrides=kept,
    )


@app.task(name=protocol.TASK_PAUSE, bind=True, throws=(ControlError,))
def pause(self):
    return _call(self, "pause")


@app.task(name=protocol.TASK_RESUME, bind=True, throws=(ControlError,))
def resume(self):
    return _call(self, "resume")


@app.task(name=protocol.TASK_REBASE, bind=True, throws=(ControlError,))
def rebase(self, checkpoint: dict, keep_factors: bool = False):
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("location"), str):
        raise ControlError(
            "invalid checkpoint", {"checkpoint": "Must be {name, location, checksum}."}
        )
    return _call(self, "rebase", checkpoint=checkpoint, keep_factors=bool(keep_factors))


@app.task(name=protocol.TASK_SNAPSHOT, bind=True, throws=(ControlError,))
def snapshot(self):
    return _call(self, "snapshot")


@app.task(name=protocol.TASK_APPLY_DELTA, bind=True, throws=(ControlError,))
def apply_delta(
    self, deltas: dict, created_at: float | None = None, trained_until: float | None = None
):
    """``deltas``: table -> {"rows": [N ids], "values": [N x D floats]} from a training cluster
    (the delta-sync baseline mode): the rows replace the node's base rows. ``created_at`` and
    ``trained_until``: delta_cluster.SyncStamp (Unix times, optional; the node checks them)."""
    if not isinstance(deltas, dict) or not deltas:
        raise ControlError("invalid deltas", {"deltas": "Must be a non-empty object of tables."})
    return _call(
        self, "apply_delta", deltas=deltas, created_at=created_at, trained_until=trained_until
    )
