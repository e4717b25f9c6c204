"""Sorts of int64 keys by the admission kernel's LSD radix sort (dlrm_core/_admission_kernel.c):
a batch's distinct keys of all trained tables (the trainer's admission and forward) and a table's
active ids in order (its snapshots). torch.unique and torch.sort compare-sort: 1.5-4.5x the CPU
on these sizes (5k to 92k keys, 2026-12-07).

Shapes: n keys, U distinct.
"""

from __future__ import annotations

import torch

from dlrm_core.kernel import admission_kernel


def _keys(keys: torch.Tensor) -> torch.Tensor:
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise TypeError(f"keys must be 1-d int64, got {keys.dtype} {list(keys.shape)}")
    return keys.contiguous()


def distinct(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """torch.unique(keys, return_inverse=True, return_counts=True): the (U,) distinct keys
    sorted, each key's (n,) index among them and their (U,) counts."""
    keys = _keys(keys)
    n = keys.numel()
    uniq, index, counts = torch.empty(3, n, dtype=torch.int64).unbind(0)
    u = admission_kernel.distinct(
        keys.data_ptr(), n, uniq.data_ptr(), index.data_ptr(), counts.data_ptr()
    )
    return uniq[:u], index, counts[:u]


def sort(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sort(keys, stable=True): the (n,) keys ascending and their positions."""
    keys = _keys(keys)
    n = keys.numel()
    # tensors of their own: a snapshot keeps ``ordered`` as its ids (and its bytes are counted)
    ordered, order = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    admission_kernel.argsort(keys.data_ptr(), n, ordered.data_ptr(), order.data_ptr())
    return ordered, order
