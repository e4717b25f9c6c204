"""The inference side of LiveUpdate: one immutable ServingDelta per published factor version.

Inference keeps a plain DLRM (base tables, its own copy) and adds the low-rank correction of
all tables at once: ``model(batch, delta=serving_delta)``. Tables of the same rank are fused
into one group; ids are offset per table into one key space (int32 when it fits) and a
CuckooIndex maps them to rows of A. One call into the serving kernel
(dlrm_core/_serving_kernel.c) per group then finds each bag's active rows, sums them and adds
(that sum) @ B_t into the pooled embeddings in place: no intermediate tensors, where the same
with torch ops took ~27 ops per batch whose fixed costs dominated small requests. The group's
memory is A, B * scale and the index's slots of (key, row) pairs, all growing with the active
rows, never with the tables.

Swapping versions is one reference assignment of a new ServingDelta; rows that pruning folded
into the trainer's base copy are written into the inference tables by the node's version
installer (nodeworker.version_installer).

Shapes: B batch, F features, T tables in a group, n_t active rows of table t, r rank, D dim.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from dlrm_core import hugepages
from dlrm_core.batch import SparseBatch
from dlrm_core.hash_index import CuckooIndex
from dlrm_core.kernel import serving_kernel
from dlrm_core.table_factors import TableFactors


@dataclass(frozen=True)
class RankGroup:
    """The tables of one rank, fused."""

    features: tuple[int, ...]  # T feature positions in the batch / model
    key_offsets: torch.Tensor  # (T,) int64 added to table t's ids: disjoint key ranges
    index: CuckooIndex  # global key of an active row -> 1 + its row in a
    a: torch.Tensor  # (1 + sum n_t, r): a zero row (ids that are not active), then A of each table
    b: torch.Tensor  # (T, r, D), B * scale of each table

    def __post_init__(self) -> None:
        # the kernel reads a and b through raw pointers: their layout must be exactly this
        t = len(self.features)
        for name, factor in (("a", self.a), ("b", self.b)):
            if factor.dtype != torch.float32 or not factor.is_contiguous():
                raise TypeError(f"{name} must be contiguous float32, got {factor.dtype}")
        if self.a.dim() != 2 or self.b.dim() != 3 or self.b.shape[:2] != (t, self.a.shape[1]):
            raise ValueError(
                f"a must be (1 + n, r) and b (T={t}, r, D), got {list(self.a.shape)} and "
                f"{list(self.b.shape)}"
            )
        if self.key_offsets.shape != (t,):
            raise ValueError(f"key_offsets must be (T,)=({t},), got {list(self.key_offsets.shape)}")
        if self.index.max_row >= self.a.shape[0]:
            raise ValueError(f"the index names row {self.index.max_row} of {self.a.shape[0]} in a")

    @functools.cached_property
    def _tables(self) -> tuple[tuple[int, int], ...]:
        """(feature position, key offset) of each table."""
        return tuple(zip(self.features, self.key_offsets.tolist(), strict=True))

    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add the summed deltas of each bag of the group's tables to ``pooled`` (B, F, D)."""
        n, num_features, dim = pooled.shape
        if (
            pooled.dtype != torch.float32
            or not pooled.is_contiguous()
            or n != batch.batch_size
            or dim != self.b.shape[2]
            or num_features <= max(self.features)
        ):
            raise ValueError(
                f"pooled must be contiguous float32 (B={batch.batch_size}, F > "
                f"{max(self.features)}, D={self.b.shape[2]}), got {pooled.dtype} "
                f"{list(pooled.shape)}"
            )
        bags = tuple(
            (
                batch.values[f].data_ptr(),
                batch.values[f].numel(),
                batch.offsets[f].data_ptr(),
                f,
                key_offset,
            )
            for f, key_offset in self._tables
        )
        serving_kernel.add_bags(
            self.index.kernel_spec,
            self.a.data_ptr(),
            self.a.shape[1],
            self.b.data_ptr(),
            pooled.data_ptr(),
            n,
            num_features,
            dim,
            bags,
        )


@dataclass(frozen=True)
class ServingDelta:
    version: int
    groups: tuple[RankGroup, ...]

    @property
    def nbytes(self) -> int:
        return sum(
            g.index.nbytes + g.a.numel() * g.a.element_size() + g.b.numel() * g.b.element_size()
            for g in self.groups
        )

    @staticmethod
    def from_factors(
        version: int,
        feature_names: Sequence[str],
        table_rows: Sequence[int],
        tables: Mapping[str, TableFactors],
    ) -> ServingDelta:
        by_rank: dict[int, list[int]] = {}
        for name, factors in tables.items():
            if factors.num_active:  # else nothing to add
                by_rank.setdefault(factors.rank, []).append(feature_names.index(name))
        groups = []
        for _, feats in sorted(by_rank.items()):
            feats.sort()
            facts = [tables[feature_names[f]] for f in feats]
            # the tables' key ranges, one after another (in Python: a version builds several
            # groups, and each torch op costs more than these few numbers)
            starts = list(itertools.accumulate((table_rows[f] for f in feats[:-1]), initial=0))
            wide = starts[-1] + table_rows[feats[-1]] > 2**31 - 1
            shifted = [f.ids + s if s else f.ids for f, s in zip(facts, starts, strict=True)]
            keys = (shifted[0] if len(shifted) == 1 else torch.cat(shifted)).to(
                torch.int64 if wide else torch.int32
            )
            groups.append(
                RankGroup(
                    tuple(feats),
                    torch.tensor(starts, dtype=torch.int64),
                    CuckooIndex.build(keys),
                    torch.cat(
                        [facts[0].a.new_zeros(1, facts[0].rank)] + [f.a for f in facts],
                        out=hugepages.empty((1 + len(keys), facts[0].rank), torch.float32),
                    ),
                    # a product by 1.0 is the same bits: stack copies
                    torch.stack([f.b * f.scale if f.scale != 1.0 else f.b for f in facts]),
                )
            )
        return ServingDelta(version, tuple(groups))

    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add every group's delta to ``pooled`` (B, F, D) from the base tables, in place."""
        for group in self.groups:
            group.add_to_(pooled, batch)
