"""The sizes and pages of a node's factor slots (nodeworker/shared_memory.py): each table's
capacity, the room a slot's serving layout needs, giving back the pages a version does not use,
measuring what the file holds and each table's share of a serving layout.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from dlrm_core.hash_index import BUCKET
from dlrm_core.row_budget import PAGE, row_bytes
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import TableFactors

_libc = ctypes.CDLL(None, use_errno=True)
_MADV_REMOVE = 9  # free a shared mapping's pages and their backing store (tmpfs: a hole)


def give_back(region: torch.Tensor, used: int, end: int | None = None) -> None:
    """Free the whole pages of ``region`` (a uint8 view of a shared file mapping) between its
    first ``used`` bytes and its byte ``end`` (default: its end)."""
    start = region.data_ptr()
    first = -(-(start + used) // PAGE) * PAGE
    last = (start + (region.numel() if end is None else end)) // PAGE * PAGE
    if last > first and _libc.madvise(
        ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_REMOVE
    ):
        raise OSError(ctypes.get_errno(), "madvise(MADV_REMOVE) of a factor slot failed")


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512  # sparse: the blocks written, not the length


def layout_bytes(
    names: tuple[str, ...], tables: Mapping[str, TableFactors], serving: ServingDelta
) -> dict[str, int]:
    """Each table's bytes of ``serving`` (built from ``tables``): its rows of A and its B, and
    the share of its group's index and zero row its active rows are of the group's."""
    out = dict.fromkeys(names, 0)
    for group in serving.groups:
        mine = [(name, f) for name in names if (f := tables.get(name)) and f.num_active]
        in_group = [(n, f) for n, f in mine if f.rank == group.a.shape[1]]
        rows = max(1, sum(f.num_active for _, f in in_group))
        shared = group.index.nbytes + 4 * group.a.shape[1]
        for name, f in in_group:
            out[name] += 4 * f.rank * (f.num_active + f.b.shape[1]) + shared * f.num_active // rows
    return out


@dataclass(frozen=True)
class TableCapacity:
    rows: int  # max active rows
    a_floats: int  # max n x r
    rank: int  # max r
    dim: int  # D

    @staticmethod
    def for_budget(budget_bytes: int, dim: int, max_rank: int) -> TableCapacity:
        """Room for any state a budget can hold: rows at rank 1, n x r floats <= budget / 4."""
        rows = max(1, budget_bytes // row_bytes(1))
        return TableCapacity(rows, max(1, budget_bytes // 4), min(max_rank, dim), dim)


def paged(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


def aligned(nbytes: int) -> int:
    return -(-nbytes // 8) * 8  # every tensor of a slot starts 8-byte aligned


def serving_capacity_bytes(capacities: Mapping[str, TableCapacity]) -> int:
    """Room for the serving layout of any version the capacities allow: A with one zero row per
    group, B, and hash-index slots (< 2 x n / MAX_LOAD + 2 buckets per group of n keys, twice
    that if a build needed one more bit; 16 bytes for int64 keys). Sparse: unused room costs
    nothing."""
    rows = sum(c.rows for c in capacities.values())
    a = sum(c.a_floats + c.rank for c in capacities.values())
    b = sum(c.rank * c.dim for c in capacities.values())
    index_slots = 5 * rows + 4 * BUCKET * len(capacities)
    return 16 * index_slots + 4 * (a + b) + 3 * 8 * len(capacities)
