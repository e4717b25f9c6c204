"""Tensors on transparent huge pages, for the serving path's randomly probed structures.

The serving kernel reads the hash index and the rows of A at random, one cache line per id:
with 4 KiB pages nearly every such read is also a TLB miss, and in a forward whose embedding
lookups and MLPs have just evicted the TLB those misses cost as much as the reads. Private
anonymous memory advised MADV_HUGEPAGE gets 2 MiB pages where the kernel's transparent huge
pages are on ("always" or "madvise"); elsewhere the advice is ignored and the memory is ordinary.
"""

from __future__ import annotations

import math
import mmap

import torch

HUGE_PAGE = 2 << 20


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised contiguous tensor, on huge pages when it spans at least one."""
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes < HUGE_PAGE:
        return torch.empty(shape, dtype=dtype)
    memory = mmap.mmap(
        -1, -(-nbytes // HUGE_PAGE) * HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
    )
    memory.madvise(mmap.MADV_HUGEPAGE)
    # the tensor holds the mapping: it is unmapped when the last view of it goes
    return torch.frombuffer(memory, dtype=torch.uint8)[:nbytes].view(dtype).view(shape)
