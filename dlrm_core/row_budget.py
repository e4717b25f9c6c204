"""What a table's LoRA state costs, per active row and per table, and how many rows a budget
holds: the sizes every planner shares (RankController, the node's shared-memory slots).

Per active row: A's row (4 r), its id (8), last-use time (4), Adagrad accumulator (4), a share
of the cuckoo index (dlrm_core/hash_index.py: 8-slot buckets of int32 (id, row), at most
INDEX_LOAD of the slots used) and of the fold log (ids folded since the last publish). Per
table: B and its Adam moments (3 r D floats), the index's whole buckets, the fold log's floor.
"""

from __future__ import annotations

import functools
import math

from dlrm_core.hash_index import BUCKET

_F32, _I64 = 4, 8
INDEX_LOAD = 0.9  # the most keys per index slot a table plans for (cuckoo, 8-slot buckets)
_INDEX_BUCKET_BYTES = 2 * BUCKET * 4  # int32 ids and rows


def row_bytes(rank: int) -> int:
    """Bytes per active row: A's row, its id, last-use time, Adagrad accumulator."""
    return _F32 * rank + _I64 + _F32 + _F32


def shared_bytes(rank: int, dim: int) -> int:
    """Bytes that do not depend on the active rows: B and its two Adam moments."""
    return 3 * _F32 * rank * dim


def overhead_bytes(num_active: int, rank: int, dim: int) -> int:
    """A, B, ids, times and optimizer state of a LiveEmbedding with these sizes (without its
    index: see index_bytes)."""
    return num_active * row_bytes(rank) + shared_bytes(rank, dim)


def index_bits(capacity: int) -> int:
    """The fewest bits (2**bits buckets) whose index holds ``capacity`` ids at INDEX_LOAD."""
    return max(1, math.ceil(math.log2(max(capacity, 1) / (BUCKET * INDEX_LOAD))))


def index_bytes(bits: int) -> int:
    return _INDEX_BUCKET_BYTES << bits


def index_capacity(bits: int) -> int:
    """The most ids an index of 2**bits buckets is planned to hold."""
    return int(BUCKET * INDEX_LOAD * (1 << bits))


# the fold log may hold FOLD_LOG_MIN + capacity // FOLD_LOG_SHARE ids (8 bytes each) between
# two publishes
FOLD_LOG_MIN, FOLD_LOG_SHARE = 16, 4


def floor_bytes(rank: int, dim: int) -> int:
    """The least a table holds at ``rank`` with no rows: B and its Adam moments, the smallest
    index and the fold log's floor."""
    return shared_bytes(rank, dim) + index_bytes(1) + 8 * FOLD_LOG_MIN


@functools.lru_cache(maxsize=4096)  # pure; asked on every admission with the same sizes
def capacity_plan(
    free_bytes: int, rank: int, dim: int, published_copy: bool = False, limit: int = 2**31 - 2
) -> tuple[int, int]:
    """(rows, index bits): the most active rows whose state, index of 2**bits buckets and fold
    log allowance fit in ``free_bytes`` at ``rank`` (rows 0 and bits 1 when none fit). With
    ``published_copy`` also a published copy of ids, A and B, and a base patch of up to every
    active row (a shrink folds them all; a reader that takes every version within a publish
    interval keeps the store's patch to one interval's folds)."""
    per_row = row_bytes(rank) + 8 / FOLD_LOG_SHARE
    free = free_bytes - shared_bytes(rank, dim) - 8 * FOLD_LOG_MIN
    if published_copy:
        patch_row = 8 + 4 * dim
        per_row += 4 * rank + 8 + patch_row
        free -= 4 * rank * dim + patch_row * FOLD_LOG_MIN
    best = (0, 1)
    for bits in range(1, 31):
        left = free - index_bytes(bits)
        if left < 0:
            break
        rows = min(index_capacity(bits), int(left // per_row), limit)
        if rows > best[0]:
            best = (rows, bits)
        if rows == limit:  # more buckets would not hold more rows
            break
    return best
