"""The node's control tasks, one per declared operation (nodeworker.protocol.operations): thin,
each forwards its keyword arguments to the running NodeRuntime over the control channel, where
they are checked against the declaration. The runtime itself is never a task."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from celery import Task

from nodeworker.celery_app import app
from nodeworker.control_socket import ControlClient, ControlError
from nodeworker.protocol.operations import NODE_OPERATIONS, NodeOperationSpec


def control_socket() -> Path:
    """NODE_CONTROL_SOCKET, else the runtime's default under $LIVEUPDATE_DATA_DIR."""
    explicit = os.environ.get("NODE_CONTROL_SOCKET")
    if explicit:
        return Path(explicit)
    data = Path(os.environ.get("LIVEUPDATE_DATA_DIR") or "var").resolve()
    return data / f"node-{os.environ.get('NODE_NAME', '')}" / "control.sock"


def _call(task: Task, op: str, **kwargs: Any) -> Any:
    try:
        return ControlClient(control_socket()).call(op, **kwargs)
    except (FileNotFoundError, ConnectionRefusedError) as exc:
        # The runtime is (re)starting: try again shortly, then fail with the reason.
        raise task.retry(exc=exc, countdown=2, max_retries=5) from exc


def _register(spec: NodeOperationSpec) -> Task:
    def forward(self: Task, **kwargs: Any) -> Any:
        return _call(self, spec.name, **kwargs)

    forward.__doc__ = spec.summary
    return app.task(name=spec.task, bind=True, throws=(ControlError,))(forward)


TASKS: dict[str, Task] = {spec.name: _register(spec) for spec in NODE_OPERATIONS}
