"""A real node for the rollback tests: the runtime (trainer process and all) in this process, its
control socket, and a real Celery worker of the node app consuming ``node.<name>`` over Redis
and forwarding each task over that socket, as on a deployed node."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from dlrm_core.checkpoint import save_model
from dlrm_core.experiment.cluster import pretrain_base
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.synthetic import SyntheticStream
from nodeworker import protocol
from nodeworker.control_socket import ControlServer
from nodeworker.runtime import NodeRuntime
from tests import services
from tests.integration.test_node_runtime import STREAM, serve_and_label, start_node, train_until

PRETRAIN_EVENTS = 20_000


@contextlib.contextmanager
def real_node(name: str, tmp_path: Path, redis_url: str) -> Iterator[tuple[NodeRuntime, object]]:
    """(runtime, its request stream) with a worker taking its tasks; all stopped at exit."""
    sock = f"/tmp/lu-{uuid.uuid4().hex[:8]}.sock"  # AF_UNIX paths max out at 107 bytes
    if not (tmp_path / "base.ckpt").exists():
        pretrained_checkpoint(tmp_path / "base.ckpt")
    runtime, stream = start_node(tmp_path, name=name)
    server = ControlServer(sock, runtime.operations).start()
    env = services.node_env(redis_url, NODE_NAME=name, NODE_CONTROL_SOCKET=sock)
    from nodeworker.replayer import requests_of

    try:
        with services.celery_worker(
            env, "nodeworker.celery_app", protocol.node_queue(name), tmp_path / "worker.log"
        ):
            yield runtime, requests_of(stream, 8)
    finally:
        server.stop()
        runtime.stop()


def pretrained_checkpoint(path: Path) -> None:
    """The rollback tests' base (start_node takes it): the stream's model pretrained on its
    first PRETRAIN_EVENTS, as the demo's base is, so its AUC sits well above chance and an
    induced drop (corrupt_base) is clear of the window's noise; a freshly initialised base read
    0.52-0.55 after its node's training, too close to chance to judge a drop."""
    torch.manual_seed(0)
    stream = SyntheticStream(STREAM)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    pretrain_base(model, iter(stream), PRETRAIN_EVENTS)
    save_model(path, model)


def trained_snapshot(runtime: NodeRuntime, traffic, samples: int) -> dict:
    """Train to ``samples``, serve labelled traffic so the AUC window is the trained model's,
    and take a snapshot (it records that AUC)."""
    train_until(runtime, traffic, samples)
    serve_and_label(runtime, traffic, 60)
    return runtime.operations.snapshot()


def corrupt_base(runtime: NodeRuntime, seed: int = 7) -> None:
    """An induced AUC drop: every row of every table replaced by large random values (a bad
    delta from a broken training cluster), through the node's own apply_delta."""
    generator = torch.Generator().manual_seed(seed)
    model = runtime.inference.model
    dim = model.config.embedding_dim
    deltas = {}
    for table, rows in zip(model.config.feature_names, model.config.table_sizes, strict=True):
        values = torch.randn(rows, dim, generator=generator) * 4.0
        deltas[table] = {"rows": list(range(rows)), "values": values.tolist()}
    runtime.operations.apply_delta(deltas)
