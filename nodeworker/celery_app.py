"""The node's own Celery app (no Django): consumes only its queue ``node.<NODE_NAME>``.

Broker: NODE_BROKER_URL, else REDIS_URL, else the filesystem broker under
$LIVEUPDATE_DATA_DIR/broker, the folders the embedded control plane uses (controlplane/settings),
so a local node and the embedded plane meet without any server. Results go to the same Redis, or
to $LIVEUPDATE_DATA_DIR/celery-results, where the control plane looks them up.

``celery -A nodeworker.celery_app worker`` with NODE_RUNTIME=1 also starts the node itself
(NodeService) when the worker is ready and stops it with the worker; the runtime is a supervised
component beside the worker, never a task.
"""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import worker_ready, worker_shutdown
from kombu import Queue

from nodeworker import protocol


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
    for folder in ("broker", "broker-processed", "broker-control", "celery-results"):
        (data / folder).mkdir(parents=True, exist_ok=True)
    config["broker_url"] = "filesystem://"
    config["result_backend"] = f"file://{data / 'celery-results'}"
    config["broker_transport_options"] = {
        "data_folder_in": str(data / "broker"),
        "data_folder_out": str(data / "broker"),
        "processed_folder": str(data / "broker-processed"),
        "control_folder": str(data / "broker-control"),  # default: ./control in the cwd
        "store_processed": False,
    }
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


@worker_shutdown.connect
def stop_runtime_with_worker(**_) -> None:
    if _service is not None:
        _service.stop()
