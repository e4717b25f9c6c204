"""The node's own Celery app (no Django): consumes only its queue ``node.<NODE_NAME>``.

Broker: NODE_BROKER_URL, else REDIS_URL, else the filesystem broker under
$LIVEUPDATE_DATA_DIR/broker, the folders the embedded control plane uses (controlplane/settings),
so a local node and the embedded plane meet without any server. Results go to the same Redis, or
to $LIVEUPDATE_DATA_DIR/celery-results, where the control plane looks them up.

``celery -A nodeworker.celery_app worker`` with NODE_RUNTIME=1 also starts the node itself
(NodeService) when the worker is ready and stops it with the worker; the runtime is a supervised
component beside the worker, never a task.

A worker started by ``liveupdate node run`` gets NODE_PARENT_PID and dies with that process
(die_with_parent), so a node killed with SIGKILL leaves no consumer of its queue behind.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

from celery import Celery
from celery.signals import worker_init, worker_ready, worker_shutdown
from kombu import Queue

from nodeworker import protocol
from nodeworker.commands.node import PARENT_PID_VAR
from nodeworker.protocol import broker as filesystem_broker

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1  # linux/prctl.h
EXIT_ORPHANED = 70  # the warm shutdown after the parent's death did not end in time


def node_name() -> str:
    name = os.environ.get("NODE_NAME", "")
    protocol.node_queue(name)  # raises ValueError naming the bad value
    return name


def celery_config(environ: dict[str, str] | None = None) -> dict:
    env = os.environ if environ is None else environ
    broker = env.get("NODE_BROKER_URL") or env.get("REDIS_URL")
    queue = protocol.node_queue(env.get("NODE_NAME", ""))
    config: dict = {
        "task_default_queue": queue,
        "task_queues": [Queue(queue)],
        "task_create_missing_queues": False,
        "task_acks_late": True,
        "worker_prefetch_multiplier": 1,
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
    }
    if broker:
        config["broker_url"] = broker
        config["result_backend"] = env.get("NODE_RESULT_BACKEND") or broker
        return config
    data = Path(env.get("LIVEUPDATE_DATA_DIR") or "var").resolve()
    filesystem_broker.make_folders(data)
    config["broker_url"] = filesystem_broker.URL
    config["result_backend"] = filesystem_broker.result_backend(data)
    config["broker_transport_options"] = filesystem_broker.transport_options(data)
    return config


app = Celery("nodeworker")
app.conf.update(celery_config())
app.conf.include = ["nodeworker.tasks"]


_service = None  # the NodeService this worker started (NODE_RUNTIME=1)


@worker_ready.connect
def start_runtime_with_worker(**_) -> None:
    """With NODE_RUNTIME=1 the worker starts the node itself (settings from NODE_* variables,
    see nodeworker.node_service.NodeSettings.from_env); `liveupdate node run` leaves it unset."""
    global _service
    if os.environ.get("NODE_RUNTIME", "").strip().lower() not in ("1", "true", "yes", "on"):
        return
    import threading

    from nodeworker.node_service import NodeService, NodeSettings

    _service = NodeService(NodeSettings.from_env()).start()
    threading.Thread(target=_service.supervise_forever, name="node-supervisor", daemon=True).start()


def _set_parent_death_signal(signum: int) -> bool:
    """Ask the kernel to send ``signum`` to this process when its parent dies (Linux prctl);
    False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, signalled: bool, poll_s: float, grace_s: float) -> None:
    while os.getppid() == parent_pid:
        time.sleep(poll_s)
    log.error("the node process %d is gone; this worker stops with it", parent_pid)
    if not signalled:  # no parent-death signal on this system: the same warm shutdown
        os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(grace_s)
    os._exit(EXIT_ORPHANED)  # a task still waiting on the dead node's control socket


def die_with_parent(parent_pid: int, poll_s: float = 0.5, grace_s: float = 15.0) -> None:
    """Stop this worker when ``parent_pid`` (the node process) dies, even by SIGKILL: the kernel
    sends SIGTERM (Celery's warm shutdown) when the parent goes, and a thread watching the parent
    pid does it where prctl is missing and ends the process if the shutdown hangs."""
    signalled = _set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        signalled = False
    threading.Thread(
        target=_watch_parent,
        args=(parent_pid, signalled, poll_s, grace_s),
        name="parent-watch",
        daemon=True,
    ).start()


@worker_init.connect
def stop_with_the_node_process(**_) -> None:
    raw = os.environ.get(PARENT_PID_VAR, "")
    if raw:
        if not (raw.isascii() and raw.isdigit() and 1 < int(raw) < 2**22):
            raise ValueError(f"{PARENT_PID_VAR} must be a process id, got {raw!r}")
        die_with_parent(int(raw))


@worker_shutdown.connect
def stop_runtime_with_worker(**_) -> None:
    if _service is not None:
        _service.stop()
