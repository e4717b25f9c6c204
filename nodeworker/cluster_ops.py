"""The node operations the training cluster calls (nodeworker.delta_cluster): a delta sync or a
delta rebase (``apply_delta``) and the announce of a rebase's snapshot before its rows travel
(``announce_snapshot``). NodeOperations has them from here.

``apply_delta`` writes rows into the base under the inference lock (a delta rebase also the
MLPs, after the trainer dropped those rows' corrections, and the rows it carried: the cluster's
row plus what the trainer learnt about it since the announce, nodeworker.trainer_rebase)."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from dlrm_core.model import base_weight
from dlrm_core.rebase import delta_rebase
from nodeworker import cluster_deltas
from nodeworker.control_socket import InvalidRequest
from nodeworker.inference import InferencePath
from nodeworker.node_events import NodeEvents
from nodeworker.protocol import telemetry as protocol_telemetry
from nodeworker.trainer_client import TrainerClient
from nodeworker.version_installer import VersionInstaller

log = logging.getLogger(__name__)

INSTALL_WAIT_S = 5.0  # a delta rebase waits this long for the version without the dropped rows


class ClusterOperations:
    inference: InferencePath
    installer: VersionInstaller
    trainer: TrainerClient
    events: NodeEvents

    def announce_snapshot(self, snapshot: int, taken_at: float) -> dict[str, Any]:
        """The cluster takes snapshot ``snapshot`` of a delta rebase now: the trainer anchors
        its served rows (one announce at a time; its rows are to come with the same id)."""
        error = protocol_telemetry.TimeWindow().error(taken_at, time.time())
        if error:
            raise InvalidRequest({"taken_at": error})
        announced = self.trainer.announce_snapshot(int(snapshot), float(taken_at))
        return {
            "snapshot": int(snapshot),
            "rows_anchored": announced.rows if announced else {},
            "anchor_bytes": announced.nbytes if announced else 0,
        }

    def apply_delta(
        self,
        deltas: dict[str, Any],
        created_at: float | None = None,
        trained_until: float | None = None,
        dense: dict[str, Any] | None = None,
        snapshot: int | None = None,
    ) -> dict[str, Any]:
        """Rows from the training cluster replace the base rows. Without ``dense`` it is the
        delta-sync baseline; with it (the cluster's MLPs) a delta rebase (_rebase) of the
        announced ``snapshot``. A ``sync`` event says what landed (rows per table, bytes) and,
        when the cluster stamps them (delta_cluster.SyncStamp), when the delta was made and
        when the newest label it learnt arrived: the node's freshness from then on
        (RuntimeMetrics.synced)."""
        stamps = cluster_deltas.sync_stamps(created_at, trained_until)
        parsed = cluster_deltas.parse_deltas(self.inference.model, deltas)
        mlps = None if dense is None else cluster_deltas.parse_dense(self.inference.model, dense)
        detail: dict[str, Any] = {
            "tables": {t: int(r.numel()) for t, (r, _) in parsed.items()},
            "bytes": cluster_deltas.nbytes(t for pair in parsed.values() for t in pair),
            **stamps,
        }
        if mlps is None:
            with self.inference.exclusive, torch.no_grad():
                for table, (rows, values) in parsed.items():
                    base_weight(self.inference.model, table)[rows] = values
        else:
            detail |= self._rebase(parsed, mlps, snapshot)
            detail["bytes"] += detail["mlp_bytes"]
        landed = time.time()
        self.inference.metrics.synced(landed, trained_until if trained_until else created_at)
        self.events.add("sync", detail)
        return detail

    def _rebase(
        self,
        parsed: dict[str, tuple[torch.Tensor, torch.Tensor]],
        mlps: dict[str, torch.Tensor],
        snapshot: int | None,
    ) -> dict[str, Any]:
        """A delta rebase (dlrm_core.rebase): those base rows and the MLPs become the cluster's,
        those rows' corrections are dropped (not folded), every other row keeps its own. The
        trainer goes first and publishes a version without them; once it serves (with the
        rows the trainer folded before it), inference writes the rows and MLPs, and the rows
        the trainer carried as it wrote them, so no older fold lands on a rebased row and from
        the answer on a rebased row serves what the trainer's base holds."""
        rebased = self.trainer.rebase_rows(
            {t: (r.numpy(), v.numpy()) for t, (r, v) in parsed.items()},
            {name: value.numpy() for name, value in mlps.items()},
            snapshot,
        )
        if rebased is not None:
            self._serve_version(rebased.version)
        carried = rebased.carried if rebased else {}
        with self.inference.exclusive:
            delta_rebase(self.inference.model, parsed, mlps)
            with torch.no_grad():
                for table, (ids, rows) in carried.items():
                    base = base_weight(self.inference.model, table)
                    base[torch.from_numpy(ids)] = torch.from_numpy(rows)
        return {
            "rebase": True,
            "mlp_bytes": cluster_deltas.nbytes(mlps.values()),
            "corrections_dropped": rebased.dropped if rebased else {},
            "snapshot": snapshot,
            "carry": rebased.carry if rebased else "no trainer",
            "rows_carried": {t: int(ids.size) for t, (ids, _) in carried.items()},
        }

    def _serve_version(self, version: int) -> None:
        """Install factor versions until ``version`` serves (the installer's thread may get
        there first); after INSTALL_WAIT_S it is left to that thread."""
        deadline = time.monotonic() + INSTALL_WAIT_S
        while self.inference.version < version:
            if time.monotonic() > deadline:
                log.warning("factor version %d not installed in %s s", version, INSTALL_WAIT_S)
                return
            self.installer.install_newest()
            time.sleep(0.005)
