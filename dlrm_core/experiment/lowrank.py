"""How low-rank the cluster's own updates are: the spectrum of its applied update per period."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from dlrm_core.experiment.cluster import SimulatedCluster
from dlrm_core.trainer import FullStepResult


class LowRankProbe:
    """Spectrum of the cluster's applied update (its optimizer's, see summary) over each sync
    period: the rank needed for 95% / 99% of its energy, per table. The rows the cluster's
    steps touch are marked as they go, so a period reads and re-snapshots only those rows
    (the rest cannot have changed), not whole tables."""

    def __init__(self, cluster: SimulatedCluster, period_s: float, start_s: float) -> None:
        self.cluster = cluster
        self.period_s = period_s
        self.next_s = start_s + period_s
        self.snap = {name: w.clone() for name, w in self._weights().items()}
        self.touched = {
            name: torch.zeros(len(w), dtype=torch.bool) for name, w in self.snap.items()
        }
        self.ranks: dict[str, list[tuple[int, int, int]]] = {}  # name -> (rows, r95, r99)
        cluster.listeners.append(self._mark)

    def _weights(self) -> dict[str, torch.Tensor]:
        sa = self.cluster.model.sparse_arch
        return {name: sa.table(name).weight.detach() for name in sa.feature_names}  # type: ignore[operator]

    def _mark(self, result: FullStepResult, now: float) -> None:
        for name, (ids, _) in result.touched.items():
            self.touched[name][ids] = True

    def advance(self, now: float) -> None:
        if now < self.next_s:
            return
        self.next_s += self.period_s * math.ceil((now - self.next_s) / self.period_s + 1e-12)
        for name, weight in self._weights().items():
            marked = torch.nonzero(self.touched[name]).squeeze(1)
            self.touched[name][marked] = False
            current = weight[marked]
            delta = current - self.snap[name][marked]
            self.snap[name][marked] = current
            changed = delta.abs().sum(1) != 0
            rows, delta = marked[changed], delta[changed]
            if rows.numel() < 2:
                continue
            s = torch.linalg.svdvals(delta.double())
            share = torch.cumsum(s.pow(2), 0) / s.pow(2).sum()
            r95 = int(torch.searchsorted(share, torch.tensor([0.95 - 1e-9]).double())) + 1
            r99 = int(torch.searchsorted(share, torch.tensor([0.99 - 1e-9]).double())) + 1
            self.ranks.setdefault(name, []).append((int(rows.numel()), r95, r99))

    def summary(self) -> dict[str, Any]:
        tables = {}
        for name, items in self.ranks.items():
            arr = np.array(items, dtype=np.float64)
            tables[name] = {
                "periods": len(items),
                "mean_changed_rows": float(arr[:, 0].mean()),
                "mean_rank_95": float(arr[:, 1].mean()),
                "mean_rank_99": float(arr[:, 2].mean()),
            }
        return {
            "quantity": "applied update of the cluster's embedding rows over one sync period",
            "optimizer": self.cluster.trainer.config.optimizer,
            "tables": tables,
        }
