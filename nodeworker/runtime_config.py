"""The configuration of one node runtime (nodeworker.runtime.NodeRuntime)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nodeworker import protocol
from nodeworker.feed import FeedConfig


@dataclass(frozen=True)
class RuntimeConfig:
    name: str
    data_dir: Path
    checkpoint: str  # the base model (dlrm_core.checkpoint)
    checkpoint_dir: Path | None = None  # rebase reads only here; None: the checkpoint's folder
    policy: protocol.Policy = protocol.DEFAULT_POLICY
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

    def feed_config(self) -> FeedConfig:
        return FeedConfig(
            label_window_s=self.label_window_s,
            max_pending=self.cache_max_pending,
            batch_rows=self.trainer_batch_rows,
            backlog_batches=self.trainer_backlog_batches,
            train=self.trainer,
        )
