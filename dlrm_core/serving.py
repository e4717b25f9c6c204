"""The inference side of LiveUpdate: one immutable ServingDelta per published factor version.

Inference keeps a plain DLRM (base tables, its own copy) and adds the low-rank correction of
all tables at once: ``model(batch, delta=serving_delta)``. Tables of the same rank are fused
into one group, so a forward costs one hash lookup, one EmbeddingBag and one bmm ((sum of A
rows) @ B) per distinct rank instead of several small ops per table; the result is added in
place into the pooled embeddings' strided (T, B, D) view, one add per run of consecutive
features (a single add when all tables share a rank). Ids are offset per table into one key
space (int32 when it fits); a CuckooIndex maps them to rows of A. The group's memory is A,
B * scale and the index's slots of (key, row) pairs, all growing with the active rows, never
with the tables.

Swapping versions is one reference assignment of a new ServingDelta; rows that pruning folded
into the trainer's base copy reach the inference tables through apply_base_patches.

Shapes: B batch, F features, T tables in a group, n_t active rows of table t, r rank, D dim.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlrm_core.batch import SparseBatch
from dlrm_core.factor_store import FactorVersion
from dlrm_core.hash_index import CuckooIndex
from dlrm_core.live_embedding import TableFactors
from dlrm_core.model import DLRM


@dataclass(frozen=True)
class RankGroup:
    """The tables of one rank, fused."""

    features: tuple[int, ...]  # T feature positions in the batch / model
    key_offsets: torch.Tensor  # (T,) int64 added to table t's ids: disjoint key ranges
    index: CuckooIndex  # global key of an active row -> 1 + its row in a
    a: torch.Tensor  # (1 + sum n_t, r): a zero row (ids that are not active), then A of each table
    b: torch.Tensor  # (T, r, D), B * scale of each table

    @functools.cached_property
    def runs(self) -> tuple[tuple[int, int, int], ...]:
        """(first feature, its table's position t in the group, length) of each run of
        consecutive features: a run's pooled embeddings are one strided (length, B, D) view,
        added to by one op."""
        runs: list[tuple[int, int, int]] = []
        for t, f in enumerate(self.features):
            if runs and runs[-1][0] + runs[-1][2] == f:
                runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
            else:
                runs.append((f, t, 1))
        return tuple(runs)

    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add the summed deltas of each bag of the group's tables to ``pooled`` (B, F, D)."""
        n, t = batch.batch_size, len(self.features)
        keys, offsets = batch.fused_bags(self.features, self.key_offsets)
        pooled_a = F.embedding_bag(self.index.rows(keys), self.a, offsets, mode="sum")
        delta = torch.bmm(pooled_a.view(t, n, -1), self.b)  # (T, B, D)
        by_feature = pooled.transpose(0, 1)  # (F, B, D) view
        for first, start, length in self.runs:
            by_feature[first : first + length].add_(delta[start : start + length])


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
        for name in tables:
            if tables[name].num_active == 0:  # nothing to add
                continue
            by_rank.setdefault(tables[name].rank, []).append(feature_names.index(name))
        groups = []
        for _, feats in sorted(by_rank.items()):
            feats.sort()
            facts = [tables[feature_names[f]] for f in feats]
            rows = torch.tensor([table_rows[f] for f in feats], dtype=torch.int64)
            key_offsets = torch.cumsum(rows, 0) - rows
            key_dtype = torch.int32 if int(rows.sum()) <= 2**31 - 1 else torch.int64
            shifted = [f.ids + s for f, s in zip(facts, key_offsets.tolist(), strict=True)]
            keys = torch.cat(shifted).to(key_dtype)
            groups.append(
                RankGroup(
                    tuple(feats),
                    key_offsets,
                    CuckooIndex.build(keys),
                    torch.cat([facts[0].a.new_zeros(1, facts[0].rank)] + [f.a for f in facts]),
                    torch.stack([f.b * f.scale for f in facts]),
                )
            )
        return ServingDelta(version, tuple(groups))

    @staticmethod
    def from_version(version: FactorVersion, model: DLRM) -> ServingDelta:
        cfg = model.config
        return ServingDelta.from_factors(
            version.version, cfg.feature_names, cfg.table_sizes, version.tables
        )

    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add every group's delta to ``pooled`` (B, F, D) from the base tables, in place."""
        for group in self.groups:
            group.add_to_(pooled, batch)


def apply_base_patches(model: DLRM, version: FactorVersion) -> None:
    """Write the folded base rows of ``version`` into ``model``'s plain tables (idempotent).
    Call it from the thread that runs inference, between batches."""
    for name, patch in version.base_patches.items():
        table = model.sparse_arch.table(name)
        if not isinstance(table, nn.EmbeddingBag):
            raise TypeError(f"table {name!r} must be a plain EmbeddingBag on the inference side")
        if patch.ids.numel():
            with torch.no_grad():
                table.weight[patch.ids] = patch.rows
