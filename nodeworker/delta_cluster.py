"""A simulated training cluster feeding a node (the demo's comparison and its hybrid node): the
node-side plumbing around dlrm_core.experiment.cluster (the cluster's training step, its changed
rows and the payload with its bytes live there, shared with the experiment) - the real-time
clock, the policy polling, the sending to the node and the retry.

The cluster trains a full copy of the node's base model (``SimulatedCluster``, sparse row
gradients) on the same stream the node replays, at the node's pace: batch k is learnt once
the node has served its last event and that event's label has arrived (event count / QPS +
label delay). It ships to the node's ``apply_delta`` control op, stamped (SyncStamp) with when
the delta was made and when the newest label it learnt arrived, so the node can report how
fresh the model it serves is, in one of two ways, by the policy the node has applied:

- delta sync (rebase_period_s 0): every ``sync_period_s`` the embedding rows changed since the
  last sync. Only rows travel (apply_delta replaces base rows), so the MLPs stay frozen (their
  rate 0): the rows it ships always match the MLPs the node serves with.
- delta rebase (rebase_period_s > 0, a LiveUpdate node): every rebase_period_s the rows changed
  since the last rebase plus the MLPs, which the cluster then trains too; the node drops those
  rows' corrections and keeps every other row's (dlrm_core.rebase). Before it takes the
  snapshot it announces it to the node (``announce_snapshot``: its trainer anchors its served
  rows), and the rows name it, so what the node learns while they travel is carried onto them
  (nodeworker.trainer_rebase); unannounced, the node overwrites them.

A sync or rebase travels: its rows reach the node ``transfer_s`` after its snapshot (the link;
production's minutes to hours, 0 by default), while the cluster keeps learning and takes no new
snapshot until they have landed (one transfer at a time, as the experiment's Link). What the node
learns meanwhile is what a rebase's announce lets it carry.

It reads the node's policy every ``sync_period_s``, so a policy change takes effect within one,
and sends nothing while the node runs its start-up policy (none applied yet): that one does not
say how the node is to be fed.
A send that fails (the node is restarting) keeps its rows dirty for the next one: none is lost.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import ChangedRows, Payload, SimulatedCluster
from dlrm_core.model import DLRM
from dlrm_core.trainer import FullTrainConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncStamp:
    """When a delta was made and when the newest label learnt into it arrived (Unix times;
    None before the cluster learnt anything). apply_delta's ``created_at`` / ``trained_until``."""

    created_at: float
    trained_until: float | None
    snapshot: int | None = None  # the announced snapshot of a delta rebase (apply_delta's)


# Until the node's policy is first read (it may start after its cluster), the cluster asks
# again this often instead of once a sync period.
POLICY_RETRY_S = 2.0


@dataclass(frozen=True)
class ClusterConfig:
    sync_period_s: float = 30.0
    qps: float = 100.0  # the node's replay rate: the cluster learns no faster than it serves
    label_delay_s: float = 1.0
    optimizer: str = "adagrad"
    lr_sparse: float = 0.05
    lr_dense: float = 0.05  # on the MLPs, only while the node takes delta rebases
    transfer_s: float = 0.0  # from a sync's snapshot to its rows reaching the node

    def __post_init__(self) -> None:
        if not (math.isfinite(self.sync_period_s) and 0.1 <= self.sync_period_s <= 86400):
            raise ValueError(f"sync_period_s must be in [0.1, 86400], got {self.sync_period_s}")
        if not (math.isfinite(self.transfer_s) and 0 <= self.transfer_s <= 3600):
            raise ValueError(f"transfer_s must be in [0, 3600], got {self.transfer_s}")
        if not (math.isfinite(self.qps) and 0 < self.qps <= 1e6):
            raise ValueError(f"qps must be in (0, 1e6], got {self.qps}")
        if not (math.isfinite(self.label_delay_s) and 0 <= self.label_delay_s <= 3600):
            raise ValueError(f"label_delay_s must be in [0, 3600], got {self.label_delay_s}")
        FullTrainConfig(self.optimizer, self.lr_dense, self.lr_sparse)  # validates them


@dataclass(frozen=True)
class Shipment:
    """A sync's or rebase's snapshot on its way to the node: what ``send`` gets, the payload
    (its bytes), the rows it took from the dirty set (put back if the send fails) and when it
    lands (time.monotonic())."""

    deltas: dict[str, dict[str, list]]
    stamp: SyncStamp
    dense: dict[str, list] | None
    payload: Payload
    taken: dict[str, Any]
    lands_at: float


# (deltas, stamp, the MLPs of a rebase or None) -> the node; raises OSError / ControlError
# when it cannot
Send = Callable[[dict[str, Any], SyncStamp, dict[str, list] | None], Any]
# (snapshot id, its Unix time) -> the node's announce_snapshot; raises when it cannot
Announce = Callable[[int, float], Any]


class DeltaSyncCluster:
    def __init__(
        self,
        model: DLRM,
        send: Send,
        config: ClusterConfig,
        rebase_period: Callable[[], float | None] = lambda: 0.0,
        announce: Announce | None = None,
    ) -> None:
        self.send = send
        self.announce = announce
        self.last_snapshot = 0
        # the node's applied policy's rebase_period_s (0: delta sync; None: no policy applied
        # yet); raises when the node is down
        self.rebase_period = rebase_period
        self.config = config
        train = FullTrainConfig(config.optimizer, config.lr_dense, config.lr_sparse)
        self.cluster = SimulatedCluster(model, train, -math.inf, -1)
        self.changed = ChangedRows(model.config)
        self.cluster.listeners.append(lambda result, _: self.changed.mark(result))
        self.events = 0
        self.syncs = 0
        self.rebases = 0
        self.rows_sent = 0
        self.bytes_sent = 0
        self.failed_syncs = 0
        self.trained_until: float | None = None  # when the newest learnt label arrived
        self.rebase_period_s = 0.0
        self.policy_read = False  # until then nothing is sent
        self.unanswered_polls = 0  # before the first read
        self.in_flight: Shipment | None = None
        self.set_rebase_period(0.0)

    def set_rebase_period(self, period_s: float) -> None:
        """Delta rebases every ``period_s`` (0: delta syncs); the MLPs learn only in rebases."""
        self.rebase_period_s = period_s
        for group in self.cluster.trainer.dense_opt.param_groups:
            group["lr"] = self.config.lr_dense if period_s > 0 else 0.0

    def poll_policy(self) -> bool:
        """Read the node's rebase period; False when the node did not answer or has no policy
        applied yet (then nothing is sent)."""
        try:
            answer = self.rebase_period()
        except Exception as exc:  # noqa: BLE001 - the node is down: keep the last one known
            if self.policy_read:
                log.warning("could not read the node's policy (%s)", exc)
            else:  # started beside the node, before its socket: asked again in POLICY_RETRY_S
                self._waiting("the node does not answer yet (%s): waiting for it", exc)
            return False
        if answer is None:
            self._waiting("the node runs its start-up policy: waiting for its policy")
            return False
        period = float(answer)
        self.policy_read = True
        if period != self.rebase_period_s:
            log.info("node's rebase period: %s s (0: delta sync)", period)
            self.set_rebase_period(period)
        return True

    @property
    def period_s(self) -> float:
        return self.rebase_period_s if self.rebase_period_s > 0 else self.config.sync_period_s

    def learn(self, batch: SparseBatch) -> float:
        now = time.time()  # run() learns a batch once its labels exist
        result = self.cluster.train(batch, now)
        self.events += len(batch)
        self.trained_until = now
        return result.loss

    def sync(self) -> int:
        """Snapshot the rows changed since the last successful sync or rebase (and in a rebase
        the MLPs) and send them, or, with a transfer time, put them on the wire (``land`` sends
        them once it has passed). Returns how many rows were sent now (0 when the send failed,
        nothing changed or they travel). One shipment at a time: none while one is on the wire."""
        if self.in_flight is not None:
            return 0
        shipment = self._snapshot()
        if shipment is None:
            return 0
        if self.config.transfer_s > 0:
            self.in_flight = shipment
            return 0
        return self._send(shipment)

    def land(self) -> int:
        """Send the shipment on the wire once its transfer time has passed; rows sent."""
        shipment = self.in_flight
        if shipment is None or time.monotonic() < shipment.lands_at:
            return 0
        self.in_flight = None
        return self._send(shipment)

    def _snapshot(self) -> Shipment | None:
        taken = self.changed.take()
        rebase = self.rebase_period_s > 0
        now = time.time()
        rows = any(ids is None or ids.numel() for ids in taken.values())
        snapshot = self._announce(now) if rebase and rows else None
        payload = self.cluster.snapshot(now, taken, mlps=rebase)
        if not payload.tables:
            return None
        dense = {name: value.tolist() for name, value in payload.dense.items()} if rebase else None
        stamp = SyncStamp(payload.snapshot_s, self.trained_until, snapshot)
        lands_at = time.monotonic() + self.config.transfer_s
        return Shipment(apply_delta_rows(payload), stamp, dense, payload, taken, lands_at)

    def _send(self, shipment: Shipment) -> int:
        try:
            answer = self.send(shipment.deltas, shipment.stamp, shipment.dense)
        except Exception as exc:  # noqa: BLE001 - the node is down: keep the rows dirty
            self.changed.put_back(shipment.taken)
            self.failed_syncs += 1
            log.warning("delta sync failed (%s); the rows stay dirty for the next one", exc)
            return 0
        sent = sum(len(d["rows"]) for d in shipment.deltas.values())
        self.rows_sent += sent
        self.bytes_sent += shipment.payload.bytes
        if shipment.dense is None:
            self.syncs += 1
            log.info("delta sync %d: %d rows after %d events", self.syncs, sent, self.events)
        else:
            self.rebases += 1
            log.info(
                "delta rebase %d: %d rows + MLPs, %d bytes, after %d events; %s",
                self.rebases,
                sent,
                shipment.payload.bytes,
                self.events,
                carry_note(answer),
            )
        return sent

    def _announce(self, now: float) -> int | None:
        """Announce a rebase's snapshot, taken ``now``, to the node before its rows travel;
        its id (milliseconds, increasing), or None when the node did not take it (the rows
        then overwrite: nothing is carried)."""
        if self.announce is None:
            return None
        snapshot = max(self.last_snapshot + 1, int(now * 1000))
        try:
            self.announce(snapshot, now)
        except Exception as exc:  # noqa: BLE001 - the rebase goes on without its carry
            log.warning("snapshot %d not announced (%s): its rows will overwrite", snapshot, exc)
            return None
        self.last_snapshot = snapshot
        return snapshot

    def run(self, batches: Iterable[SparseBatch], stop: threading.Event) -> None:
        """Learn each batch when its labels exist on the node's clock; every sync period read
        the node's policy and sync, or rebase when a rebase period has passed (once the last
        one landed); land a shipment when its transfer time has passed."""
        cfg = self.config
        start = time.monotonic()
        self.poll_policy()
        next_check, last_sent = start + self._check_interval(), start
        for batch in batches:
            ready = start + (self.events + len(batch)) / cfg.qps + cfg.label_delay_s
            while True:
                now = time.monotonic()
                self.land()
                if now >= next_check:
                    due = now - last_sent >= self.period_s - 1e-3 and self.in_flight is None
                    if self.poll_policy() and due:
                        failed = self.failed_syncs
                        self.sync()
                        if self.failed_syncs == failed:  # else retried at the next check
                            last_sent = now
                    next_check = now + self._check_interval()
                if now >= ready:
                    break
                if stop.wait(min(ready, next_check, self._lands_at()) - now):
                    return
            self.learn(batch)
        if self.policy_read or self.poll_policy():  # a finite stream (a file) ended
            self._drain(stop)
            self.sync()  # ship the last rows
            self._drain(stop)

    def _waiting(self, message: str, *args: object) -> None:
        """Logs a wait for the node's first policy once, then at debug (asked every 2 s)."""
        log.log(logging.DEBUG if self.unanswered_polls else logging.INFO, message, *args)
        self.unanswered_polls += 1

    def _check_interval(self) -> float:
        """Seconds to the next policy read: a sync period, or, until the node's policy is first
        read, POLICY_RETRY_S, so a cluster started beside its node does not wait a period."""
        if self.policy_read:
            return self.config.sync_period_s
        return min(POLICY_RETRY_S, self.config.sync_period_s)

    def _lands_at(self) -> float:
        return math.inf if self.in_flight is None else self.in_flight.lands_at

    def _drain(self, stop: threading.Event) -> None:
        """Wait for the shipment on the wire (if any) to land, unless stopped."""
        while self.in_flight is not None and not stop.wait(self._lands_at() - time.monotonic()):
            self.land()


def apply_delta_rows(payload: Payload) -> dict[str, dict[str, list]]:
    """table -> {"rows": [N ids], "values": [N x D]}: a payload of changed rows (never a whole
    table) in apply_delta's wire format."""
    out = {}
    for name, (ids, rows) in payload.tables.items():
        assert ids is not None  # ChangedRows names rows
        out[name] = {"rows": ids.tolist(), "values": rows.tolist()}
    return out


def carry_note(answer: Any) -> str:
    """What the node said it carried in a rebase (apply_delta's ``carry`` and
    ``rows_carried``), for the cluster's log."""
    if not isinstance(answer, dict) or "carry" not in answer:
        return "carry: not reported"
    rows = answer.get("rows_carried") or {}
    return f"carry: {answer['carry']} ({sum(rows.values())} rows)"
