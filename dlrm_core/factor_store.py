"""Published factor versions: the trainer publishes, inference swaps them in atomically.

A FactorVersion is immutable (its tensors are private copies that nobody mutates) and is
replaced as a whole by one reference assignment, so a reader that takes ``store.latest()`` once
per batch sees one consistent version, never a mix of two.

Rows that pruning and rank changes folded into the trainer's base copy travel as a BasePatch:
the absolute values of the base rows folded since the version a reader last took (the trainer
publishes only its new folds; the store merges them into a version nobody has taken yet, so a
reader that skips versions still gets every fold, and a patch stays bounded by the folds between
two reads instead of growing with every row ever folded). Applying it is idempotent. A reader
starts from the trainer's base as of the first version it takes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import torch

from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.table_factors import TableFactors


@dataclass(frozen=True)
class BasePatch:
    ids: torch.Tensor  # (m,) int64 sorted base rows changed by folds
    rows: torch.Tensor  # (m, D) their values in the trainer's base copy

    @staticmethod
    def empty(dim: int) -> BasePatch:
        return BasePatch(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dim))

    @staticmethod
    def of(live: LiveEmbedding, ids: torch.Tensor) -> BasePatch:
        """The current values of ``live``'s base rows ``ids`` (sorted, unique)."""
        return BasePatch(ids, live.base.weight.detach().index_select(0, ids))  # a copy

    def extended(self, live: LiveEmbedding, new_ids: torch.Tensor) -> BasePatch:
        """This patch plus ``new_ids``, all with the current values of ``live``'s base."""
        if new_ids.numel() == 0:
            return self
        return BasePatch.of(live, torch.unique(torch.cat([self.ids, new_ids])))

    def then(self, newer: BasePatch) -> BasePatch:
        """This patch followed by ``newer`` (whose rows win where both have one)."""
        if self.ids.numel() == 0:
            return newer
        if newer.ids.numel() == 0:
            return self
        older = ~torch.isin(self.ids, newer.ids)
        ids = torch.cat([self.ids[older], newer.ids])
        order = torch.argsort(ids)
        return BasePatch(ids[order], torch.cat([self.rows[older], newer.rows])[order])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.ids, self.rows))


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
        self._taken = 0  # the newest version a reader took

    def publish(
        self,
        tables: Mapping[str, TableFactors],
        base_patches: Mapping[str, BasePatch],
        created_at: float,
    ) -> FactorVersion:
        """Publish ``tables`` with the base rows folded since the previous publish."""
        with self._lock:
            latest = self._latest
            number = 1 if latest is None else latest.version + 1
            patches = dict(base_patches)
            if latest is not None and latest.version > self._taken:  # nobody has its folds
                for name, older in latest.base_patches.items():
                    patches[name] = older.then(patches[name]) if name in patches else older
            version = FactorVersion(
                number,
                float(created_at),
                MappingProxyType(dict(tables)),
                MappingProxyType(patches),
            )
            self._latest = version  # one reference swap: readers see old or new, whole
        return version

    def latest(self) -> FactorVersion | None:
        """The newest version; taking it makes the next one carry only newer folds."""
        latest = self._latest
        if latest is not None:
            self._taken = max(self._taken, latest.version)
        return latest

    def nbytes(self, table: str) -> int:
        """Bytes of the newest version's copies of ``table`` (what the store keeps alive)."""
        latest = self._latest
        if latest is None:
            return 0
        f, patch = latest.tables.get(table), latest.base_patches.get(table)
        copies = sum(t.numel() * t.element_size() for t in (f.ids, f.a, f.b)) if f else 0
        return copies + (patch.nbytes if patch is not None else 0)
