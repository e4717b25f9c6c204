"""The trainer's proportional memory account: every byte it holds that grows with active rows,
folds or time, measured from the tensors themselves (nbytes), against the policy's budget.

Per table: the factors and their storage's free rows (A, B), optimizer state, the slot map (ids,
last-use times, cuckoo index), the sightings sketch, the fold log not yet published, the newest
published version the trainer's store keeps (its copies of ids, A, B and the base rows folded
since a reader last took a version), and on a node the record of folded rows its snapshots need
(fold_bitmap.py, taken out of the table's budget), the base pages its folds made private that
inference has not caught up with (nodeworker/base_pages.py) and the node's copies outside the
trainer: its shared-memory slots' serving layouts, which inference serves in place
(nodeworker/shared_memory.py SharedFactors.held_bytes). Besides the tables: the label join's
pending served batches and the replay window (on a node: the feed's backlog of joined batches,
held within its share of the budget, nodeworker/node_budget.py BACKLOG_SHARE, and the rows
waiting for their labels, as the bytes of their arenas, nodeworker/join_rows.py: bounded by
max_pending and the label window, counted here beside the cap, as no valid row is dropped to
meet it), and a node's delta-rebase anchor while it waits for its rows (within its share of the
budget, dlrm_core/rebase.py ANCHOR_SHARE). The budget caps the tables' parts
(RankController plans within it and evicts or refuses before exceeding it). MemoryReport is one
LiveEmbedding's part of it, as LiveEmbedding.memory measures it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of a LiveEmbedding's state against its base table."""

    a_bytes: int
    b_bytes: int
    slot_map_bytes: int  # ids, last-use times, the index
    optimizer_bytes: int  # row-wise Adagrad for A, Adam moments for B
    base_bytes: int
    fold_log_bytes: int = 0  # ids folded since the last take_folded

    @property
    def overhead_bytes(self) -> int:
        return (
            self.a_bytes
            + self.b_bytes
            + self.slot_map_bytes
            + self.optimizer_bytes
            + self.fold_log_bytes
        )

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.overhead_bytes / self.base_bytes


@dataclass(frozen=True)
class TableAccount:
    factors: int  # A (all storage rows) and B
    optimizer: int  # row-wise Adagrad accumulators, B's Adam moments
    slot_map: int  # ids, last-use times, the cuckoo index
    sketch: int  # the second-sighting gate
    gram: int  # the rank controller's packed gradient Gram (row_budget.gram_bytes)
    fold_log: int  # ids folded since the last publish
    published: int  # the newest published version's copies and base patch
    budget: int
    base: int  # bytes of the base table, for the percentage
    fold_record: int = 0  # a node's records of folds: rows since its checkpoint, a flag a page
    private_base: int = 0  # a node trainer's base pages its folds copied, not yet given back
    node_copies: int = 0  # a node's slots (both versions, serving layouts), inference's copy

    @property
    def total(self) -> int:
        return (
            self.factors
            + self.optimizer
            + self.slot_map
            + self.sketch
            + self.gram
            + self.fold_log
            + self.published
            + self.fold_record
            + self.private_base
            + self.node_copies
        )


@dataclass(frozen=True)
class MemoryAccount:
    tables: Mapping[str, TableAccount]
    pending: int  # served rows waiting for labels, joined ones waiting, the replay window
    dense: int = 0  # top-layer tuning's gradients and accumulators (dlrm_core.top_tune)
    rebase_anchor: int = 0  # a node's rows held for a delta rebase (nodeworker/trainer_rebase.py)

    @property
    def total(self) -> int:
        tables = sum(t.total for t in self.tables.values())
        return tables + self.pending + self.dense + self.rebase_anchor

    @property
    def budget(self) -> int:
        return sum(t.budget for t in self.tables.values())

    @property
    def base(self) -> int:
        return sum(t.base for t in self.tables.values())

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.total / self.base if self.base else 0.0
