"""The pages of a node's factor slots (nodeworker/shared_memory.py): giving back those a
version does not use, measuring what the files hold, and each table's share of a serving layout.
"""

from __future__ import annotations

import ctypes
from collections.abc import Mapping
from pathlib import Path

import torch

from dlrm_core.row_budget import PAGE
from dlrm_core.serving import ServingDelta
from dlrm_core.table_factors import TableFactors

_libc = ctypes.CDLL(None, use_errno=True)
_MADV_REMOVE = 9  # free a shared mapping's pages and their backing store (tmpfs: a hole)


def give_back(region: torch.Tensor, used: int) -> None:
    """Free the whole pages of ``region`` (a view of a shared file mapping) past its first
    ``used`` bytes."""
    start = region.data_ptr()
    first = -(-(start + used) // PAGE) * PAGE
    last = (start + region.numel() * region.element_size()) // PAGE * PAGE
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
        mine = [(name, tables[name]) for name in names if tables[name].num_active]
        in_group = [(n, f) for n, f in mine if f.rank == group.a.shape[1]]
        rows = max(1, sum(f.num_active for _, f in in_group))
        shared = group.index.nbytes + 4 * group.a.shape[1]
        for name, f in in_group:
            out[name] += 4 * f.rank * (f.num_active + f.b.shape[1]) + shared * f.num_active // rows
    return out
