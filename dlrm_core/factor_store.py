"""Published factor versions: the trainer publishes, inference swaps them in atomically.

A FactorVersion is immutable (its tensors are private copies that nobody mutates) and is
replaced as a whole by one reference assignment, so a reader that takes ``store.latest()`` once
per batch sees one consistent version, never a mix of two.

Rows that pruning folded into the trainer's base copy travel as a BasePatch: the absolute
values of every base row folded since the node's base checkpoint. Applying it is idempotent,
so a reader that skips versions still converges to the trainer's base copy.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from dlrm_core.live_embedding import LiveEmbedding, TableFactors


@dataclass(frozen=True)
class BasePatch:
    ids: torch.Tensor  # (m,) int64 sorted base rows changed by folds
    rows: torch.Tensor  # (m, D) their values in the trainer's base copy

    @staticmethod
    def empty(dim: int) -> BasePatch:
        return BasePatch(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim))

    def extended(self, live: LiveEmbedding, new_ids: torch.Tensor) -> BasePatch:
        """This patch plus ``new_ids``, all with the current values of ``live``'s base."""
        if new_ids.numel() == 0:
            return self
        ids = torch.unique(torch.cat([self.ids, new_ids]))
        return BasePatch(ids, live.base.weight.detach()[ids].clone())


@dataclass(frozen=True)
class FactorVersion:
    version: int  # 1, 2, ... in publish order
    created_at: float  # stream time of the newest sample trained on
    tables: Mapping[str, TableFactors]
    base_patches: Mapping[str, BasePatch]


class FactorStore:
    """Single writer (the trainer), any number of readers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._latest: FactorVersion | None = None

    def publish(
        self,
        tables: Mapping[str, TableFactors],
        base_patches: Mapping[str, BasePatch],
        created_at: float,
    ) -> FactorVersion:
        with self._lock:
            number = 1 if self._latest is None else self._latest.version + 1
            version = FactorVersion(
                number,
                float(created_at),
                MappingProxyType(dict(tables)),
                MappingProxyType(dict(base_patches)),
            )
            self._latest = version  # one reference swap: readers see old or new, whole
        return version

    def latest(self) -> FactorVersion | None:
        return self._latest
