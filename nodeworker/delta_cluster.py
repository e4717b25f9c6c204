"""A simulated training cluster feeding a delta-sync baseline node (the demo's comparison).

The cluster trains a full copy of the node's base model (dlrm_core's FullSparseTrainer, sparse
row gradients) on the same stream the node replays, at the node's pace: batch k is learnt once
the node has served its last event and that event's label has arrived (event count / QPS +
label delay). Every ``sync_period_s`` it sends the embedding rows changed since the last sync to
the node's ``apply_delta`` control op, the way a production cluster ships deltas to inference,
stamped (SyncStamp) with when the delta was made and when the newest label it learnt arrived, so
the node can report how fresh the model it serves is.
Only rows travel (apply_delta replaces base rows), so the cluster keeps the MLPs frozen
(lr_dense 0): the rows it ships always match the MLPs the node serves with.

A sync that fails (the node is restarting) keeps its rows dirty for the next one: none is lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig
from nodeworker.shared_memory import base_weight

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncStamp:
    """When a delta was made and when the newest label learnt into it arrived (Unix times;
    None before the cluster learnt anything). apply_delta's ``created_at`` / ``trained_until``."""

    created_at: float
    trained_until: float | None


@dataclass(frozen=True)
class ClusterConfig:
    sync_period_s: float = 30.0
    qps: float = 100.0  # the node's replay rate: the cluster learns no faster than it serves
    label_delay_s: float = 1.0
    optimizer: str = "adagrad"
    lr_sparse: float = 0.05

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sync_period_s) and 0.1 <= self.sync_period_s <= 86400):
            raise ValueError(f"sync_period_s must be in [0.1, 86400], got {self.sync_period_s}")
        if not (math.isfinite(self.qps) and 0 < self.qps <= 1e6):
            raise ValueError(f"qps must be in (0, 1e6], got {self.qps}")
        if not (math.isfinite(self.label_delay_s) and 0 <= self.label_delay_s <= 3600):
            raise ValueError(f"label_delay_s must be in [0, 3600], got {self.label_delay_s}")
        FullTrainConfig(self.optimizer, 0.0, self.lr_sparse)  # validates both


def pretrain(model: DLRM, batches: Iterable[SparseBatch], events: int, lr: float = 0.05) -> int:
    """Train ``model`` (MLPs and rows, Adagrad) on the stream's first ``events`` events; the
    shared base checkpoint of both demo nodes and the cluster. Returns the events learnt."""
    trainer = FullSparseTrainer(model, FullTrainConfig("adagrad", lr, lr))
    seen = 0
    for batch in batches:
        if seen >= events:
            break
        trainer.step(batch)
        seen += len(batch)
    return seen


class DeltaSyncCluster:
    def __init__(
        self,
        model: DLRM,
        send: Callable[[dict[str, Any], SyncStamp], Any],
        config: ClusterConfig,
    ) -> None:
        self.model = model
        # (deltas, stamp) -> the node (raises OSError / ControlError when it cannot)
        self.send = send
        self.config = config
        self.trainer = FullSparseTrainer(
            model, FullTrainConfig(config.optimizer, 0.0, config.lr_sparse)
        )
        self._dirty: dict[str, list[torch.Tensor]] = {n: [] for n in model.config.feature_names}
        self.events = 0
        self.syncs = 0
        self.rows_sent = 0
        self.failed_syncs = 0
        self.trained_until: float | None = None  # when the newest learnt label arrived

    def learn(self, batch: SparseBatch) -> float:
        result = self.trainer.step(batch)
        for name, (ids, _) in result.touched.items():
            self._dirty[name].append(ids)
        self.events += len(batch)
        self.trained_until = time.time()  # run() learns a batch once its labels exist
        return result.loss

    def deltas(self) -> dict[str, dict[str, list]]:
        """table -> {"rows": [N ids], "values": [N x D]} of every row changed since the last
        successful sync (apply_delta's wire format)."""
        out = {}
        for name, parts in self._dirty.items():
            if not parts:
                continue
            ids = torch.unique(torch.cat(parts))
            weight = base_weight(self.model, name).detach()
            out[name] = {"rows": ids.tolist(), "values": weight[ids].tolist()}
        return out

    def sync(self) -> int:
        """Send the changed rows; returns how many rows were sent (0 when the send failed)."""
        deltas = self.deltas()
        if not deltas:
            return 0
        try:
            self.send(deltas, SyncStamp(time.time(), self.trained_until))
        except Exception as exc:  # noqa: BLE001 - the node is down: keep the rows dirty
            self.failed_syncs += 1
            log.warning("delta sync failed (%s); the rows stay dirty for the next sync", exc)
            return 0
        sent = sum(len(d["rows"]) for d in deltas.values())
        for parts in self._dirty.values():
            parts.clear()
        self.syncs += 1
        self.rows_sent += sent
        log.info("delta sync %d: %d rows after %d events", self.syncs, sent, self.events)
        return sent

    def run(self, batches: Iterable[SparseBatch], stop: threading.Event) -> None:
        """Learn each batch when its labels exist on the node's clock, sync every period."""
        cfg = self.config
        start = time.monotonic()
        next_sync = start + cfg.sync_period_s
        for batch in batches:
            ready = start + (self.events + len(batch)) / cfg.qps + cfg.label_delay_s
            while True:
                now = time.monotonic()
                if now >= next_sync:
                    self.sync()
                    next_sync = now + cfg.sync_period_s
                if now >= ready:
                    break
                if stop.wait(min(ready, next_sync) - now):
                    return
            self.learn(batch)
        self.sync()  # a finite stream (a file) ended: ship the last rows
