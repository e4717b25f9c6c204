"""The trainer process's side of a delta rebase (dlrm_core.rebase): the cluster's rows and MLPs
land in its model, the refreshed rows' corrections are dropped (not folded), and the rows it
wrote are marked in its private base pages, given back (PrivateBasePages) once inference has
written the same rows into the shared base. The loop then publishes a version without the
dropped corrections (nodeworker.trainer_proc).

The carry (the experiment's hybrid, dlrm_core.experiment.liveupdate.Hybrid): a rebase lands a
transfer time after the cluster's snapshot, and what the trainer learnt about a refreshed row in
between is in neither the cluster's row nor the trainer's state at the snapshot. The cluster
announces its snapshot before the rows travel (AnnounceSnapshot); the trainer then keeps an
anchor by dlrm_core.rebase's bounded rule (recent_anchor: the ids of its corrected rows and the
served rows of the most recently used of them, as many as the budget's anchor share holds,
NodeBudget.anchor, while the policy sets a rebase period). When the rows of that snapshot land,
a refreshed row anchored gets the cluster's row plus (served now - served at the announce), and
one that held no correction at the announce gets the cluster's row plus its correction since
(dlrm_core.rebase.carry); a row corrected then but not anchored is overwritten and its
correction dropped, as is every row of a rebase without its announce. One anchor is held at a
time (a new announce replaces it), counted in the memory account, and dropped when its rows do
not come within two rebase periods (at least ANCHOR_TTL_S).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from dlrm_core.rebase import SnapshotAnchor, anchor_caps, carry, delta_rebase, recent_anchor
from nodeworker.base_pages import PrivateBasePages
from nodeworker.node_budget import NodeBudget
from nodeworker.trainer_messages import AnnounceSnapshot, RebaseRows, SnapshotAnnounced
from nodeworker.tuned_top import TopTuning

if TYPE_CHECKING:
    from dlrm_core.trainer import LiveTrainer

log = logging.getLogger(__name__)

Rows = dict[str, tuple[torch.Tensor, torch.Tensor]]  # table -> (ids (m,), rows (m, D))
Carried = dict[str, tuple[np.ndarray, np.ndarray]]  # the same, as sent to the node

ANCHOR_TTL_S = 60.0  # an anchor waits for its rows two rebase periods, and at least this long


@dataclass(frozen=True)
class PendingAnchor:
    """What the trainer keeps from an announce until its rows land: its anchor per table."""

    snapshot: int
    expires: float  # Unix time
    anchors: dict[str, SnapshotAnchor]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.anchors.values())


@dataclass(frozen=True)
class Rebased:
    dropped: dict[str, int]  # table -> corrections dropped
    carried: Carried  # the rows written carried
    carry: str  # "carried", or why not


class TrainerRebase:
    def __init__(
        self, trainer: LiveTrainer, private_pages: dict[str, PrivateBasePages], tuning: TopTuning
    ) -> None:
        self.trainer = trainer
        self.private_pages = private_pages
        self.tuning = tuning
        self.caps: dict[str, int] = {}  # table -> bytes its anchor may hold
        self.ttl_s = ANCHOR_TTL_S
        self.pending: PendingAnchor | None = None
        self.expired: int | None = None  # the last snapshot whose anchor expired

    @property
    def nbytes(self) -> int:
        return self.pending.nbytes if self.pending is not None else 0

    def limit(self, budget: NodeBudget, rebase_period_s: float) -> None:
        """The anchor's share of ``budget``, split over the trained tables by their budgets,
        and how long it waits for its rows (a policy's, from the next announce on)."""
        self.caps = anchor_caps(budget.anchor, budget.tables)
        self.ttl_s = max(ANCHOR_TTL_S, 2.0 * rebase_period_s)

    def announce(self, cmd: AnnounceSnapshot, now: float) -> SnapshotAnnounced:
        """Anchor the served rows now for the rebase of snapshot ``cmd.snapshot``."""
        self.pending = None  # one at a time: a newer snapshot's rows come next
        anchors = {}
        for name, live in self.trainer.lives.items():
            held = recent_anchor(live, self.caps.get(name, 0), now)
            if held is not None:  # else its corrected rows are overwritten and dropped
                anchors[name] = held
        self.pending = PendingAnchor(cmd.snapshot, now + self.ttl_s, anchors)
        rows = {name: int(a.anchor.ids.numel()) for name, a in anchors.items()}
        return SnapshotAnnounced(cmd.snapshot, rows, self.pending.nbytes)

    def expire(self, now: float) -> None:
        """Drop an anchor whose rows did not come in time."""
        if self.pending is not None and now > self.pending.expires:
            log.warning(
                "snapshot %d's rows did not come: its anchor dropped", self.pending.snapshot
            )
            self.expired, self.pending = self.pending.snapshot, None

    def apply(self, cmd: RebaseRows, now: float) -> Rebased:
        """Rebase the trainer's model onto ``cmd``'s rows and MLPs, carrying what it learnt
        since the announce when it holds that snapshot's anchor."""
        self.expire(now)
        tables = {  # an untrained table's pages stay shared: they see inference's write
            name: (torch.from_numpy(ids), torch.from_numpy(rows))
            for name, (ids, rows) in cmd.tables.items()
            if name in self.private_pages
        }
        carry = self._why_not(cmd.snapshot)
        carried: Carried = {}
        if carry == "carried":
            assert self.pending is not None
            tables, carried = self._carry(tables, self.pending)
            self.pending = None
        else:
            log.info("delta rebase (snapshot %s) overwrites: %s", cmd.snapshot, carry)
        dense = {name: torch.from_numpy(value) for name, value in cmd.dense.items()}
        dropped = delta_rebase(self.trainer.model, tables, dense)
        if dense:
            self.tuning.rebased()  # the cluster's MLPs replaced the tuned layers
        for name, (ids, _) in tables.items():
            self.private_pages[name].folded(ids)
        return Rebased(dropped, carried, carry)

    def _why_not(self, snapshot: int | None) -> str:
        """ "carried" when the anchor of ``snapshot`` is held, else why the rows overwrite."""
        if snapshot is None:
            return "no snapshot announced"
        if self.pending is not None and self.pending.snapshot == snapshot:
            return "carried"
        if self.expired == snapshot:
            return "its anchor expired"
        if self.pending is not None:
            return f"snapshot {self.pending.snapshot} announced since"
        return "its announce did not reach the trainer"

    def _carry(self, tables: Rows, pending: PendingAnchor) -> tuple[Rows, Carried]:
        """The rows to write: the cluster's, plus the change since the anchor of those anchored
        or not corrected at the announce; and those rows that differ from the cluster's."""
        out, carried = dict(tables), Carried()
        for name, (ids, rows) in tables.items():
            if name not in pending.anchors:
                continue
            rows, moved = carry(self._table(name), ids, rows, pending.anchors[name])
            out[name] = (ids, rows)
            carried[name] = (ids[moved].numpy(), rows[moved].numpy())
        return out, carried

    def _table(self, name: str) -> torch.nn.Module:
        return self.trainer.model.sparse_arch.table(name)
