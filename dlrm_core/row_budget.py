"""What a table's LoRA state costs, per active row and per table, and how many rows a budget
holds: the sizes every planner shares (RankController, the node's shared-memory slots).

Per active row: A's row (4 r), its id (8), last-use time (4), Adagrad accumulator (4), a share
of the cuckoo index (dlrm_core/hash_index.py: 8-slot buckets of int32 (id, row), at most
INDEX_LOAD of the slots used) and of the fold log (ids folded since the last publish). Per
table: B and its Adam moments (3 r D floats), the index's whole buckets and hash multipliers,
the fold log's floor, the rank controller's gradient Gram (its upper triangle: D (D + 1) / 2
floats).
On a node (``node_key_bytes``) also the copies outside the trainer (node_copy_bytes).
"""

from __future__ import annotations

import functools
import math

from dlrm_core.gradient_gram import packed_bytes
from dlrm_core.hash_index import BUCKET, MAX_LOAD

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
    """The buckets and the two hash multipliers (int32) of a cuckoo index."""
    return (_INDEX_BUCKET_BYTES << bits) + 2 * 4


def gram_bytes(dim: int) -> int:
    """The rank controller's gradient Gram (dlrm_core/rank.py), held for good beside the
    table's state: symmetric, packed to its upper triangle (gradient_gram.py), 544 bytes at
    D = 16."""
    return packed_bytes(dim)


def index_capacity(bits: int) -> int:
    """The most ids an index of 2**bits buckets is planned to hold."""
    return int(BUCKET * INDEX_LOAD * (1 << bits))


# the fold log may hold FOLD_LOG_MIN + capacity // FOLD_LOG_SHARE ids (8 bytes each) between
# two publishes
FOLD_LOG_MIN, FOLD_LOG_SHARE = 16, 4


def floor_bytes(rank: int, dim: int, node_key_bytes: int = 0) -> int:
    """The least a table holds at ``rank`` with no rows: B and its Adam moments, the smallest
    index and the fold log's floor, the controller's gradient Gram (on a node, also its copies'
    floor)."""
    node = node_copy_floor(rank, dim, node_key_bytes) if node_key_bytes else 0
    fixed = shared_bytes(rank, dim) + index_bytes(1) + 8 * FOLD_LOG_MIN + gram_bytes(dim)
    return fixed + node


# A node's copies of a table outside its trainer: two shared-memory slots (the double buffer)
# each holding a version's serving layout, which inference serves in place
# (nodeworker/shared_memory.py, version_installer.py).
SLOT_COPIES = 2
PAGE = 4096  # the slots are allocated (and given back) in whole pages
# Paid once per node, not per table: every slot is one arena for all tables' serving layouts,
# so only its last page is partly used.
NODE_PAGE_FLOOR = SLOT_COPIES * PAGE


def _layout_index_row(key_bytes: int) -> int:
    """The most bytes per key of a serving layout's cuckoo index (dlrm_core/hash_index.py):
    up to 2 / MAX_LOAD slots a key (a power of two of buckets), twice that when a build needs
    one more bit; a slot is a key and a row of ``key_bytes`` each."""
    return math.ceil(2 * 2 * 2 * key_bytes / MAX_LOAD)


def _layout_row(rank: int, key_bytes: int) -> int:
    return _F32 * rank + _layout_index_row(key_bytes)


def node_copy_bytes(rows: int, rank: int, dim: int, key_bytes: int) -> int:
    """Bytes of a node's copies of a table of ``rows`` active rows outside its trainer
    (without the node's page floor, NODE_PAGE_FLOOR)."""
    return rows * SLOT_COPIES * _layout_row(rank, key_bytes) + node_copy_floor(rank, dim, key_bytes)


def node_copy_floor(rank: int, dim: int, key_bytes: int) -> int:
    """The part of node_copy_bytes that does not grow with rows: B in every copy, the layout's
    zero row and smallest index, and an eighth more for the 8-byte alignment of its regions."""
    layout = _F32 * rank * (dim + 1) + 2 * BUCKET * 2 * key_bytes + 6 * 8
    return SLOT_COPIES * layout + layout // 8


@functools.lru_cache(maxsize=4096)  # pure; asked on every admission with the same sizes
def capacity_plan(
    free_bytes: int,
    rank: int,
    dim: int,
    published_copy: bool = False,
    limit: int = 2**31 - 2,
    node_key_bytes: int = 0,
) -> tuple[int, int]:
    """(rows, index bits): the most active rows whose state, index of 2**bits buckets and fold
    log allowance fit in ``free_bytes`` at ``rank`` (rows 0 and bits 1 when none fit). With
    ``published_copy`` also a published copy of ids, A and B, and a base patch of up to every
    active row (a shrink folds them all; a reader that takes every version within a publish
    interval keeps the store's patch to one interval's folds). With ``node_key_bytes`` (a
    node's serving index keys: 4 or 8; 0: not on a node) also the node's copies outside the
    trainer (node_copy_bytes), so the budget caps the whole proportional part."""
    per_row = row_bytes(rank) + 8 / FOLD_LOG_SHARE
    free = free_bytes - shared_bytes(rank, dim) - 8 * FOLD_LOG_MIN - gram_bytes(dim)
    if published_copy:
        patch_row = 8 + 4 * dim
        per_row += 4 * rank + 8 + patch_row
        free -= 4 * rank * dim + patch_row * FOLD_LOG_MIN
    if node_key_bytes:
        per_row += node_copy_bytes(1, rank, dim, node_key_bytes) - node_copy_floor(
            rank, dim, node_key_bytes
        )
        free -= node_copy_floor(rank, dim, node_key_bytes)
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
