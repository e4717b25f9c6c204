"""The trainer process's side of a delta rebase (dlrm_core.rebase): the cluster's rows and MLPs
land in its model, the refreshed rows' corrections are dropped (not folded), and the rows it
wrote are marked in its private base pages, given back (PrivateBasePages) once inference has
written the same rows into the shared base. The loop then publishes a version without the
dropped corrections (nodeworker.trainer_proc)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dlrm_core.rebase import delta_rebase
from nodeworker.base_pages import PrivateBasePages
from nodeworker.trainer_messages import RebaseRows
from nodeworker.tuned_top import TopTuning

if TYPE_CHECKING:
    from dlrm_core.trainer import LiveTrainer


class TrainerRebase:
    def __init__(
        self, trainer: LiveTrainer, private_pages: dict[str, PrivateBasePages], tuning: TopTuning
    ) -> None:
        self.trainer = trainer
        self.private_pages = private_pages
        self.tuning = tuning

    def apply(self, cmd: RebaseRows) -> dict[str, int]:
        """Rebase the trainer's model onto ``cmd``'s rows and MLPs; returns the corrections
        dropped per table."""
        tables = {  # an untrained table's pages stay shared: they see inference's write
            name: (torch.from_numpy(ids), torch.from_numpy(rows))
            for name, (ids, rows) in cmd.tables.items()
            if name in self.private_pages
        }
        dense = {name: torch.from_numpy(value) for name, value in cmd.dense.items()}
        dropped = delta_rebase(self.trainer.model, tables, dense)
        if dense:
            self.tuning.rebased()  # the cluster's MLPs replaced the tuned layers
        for name, (ids, _) in tables.items():
            self.private_pages[name].folded(ids)
        return dropped
