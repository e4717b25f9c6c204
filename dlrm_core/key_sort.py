"""Sorts of int64 keys by the admission kernel's LSD radix sort (dlrm_core/_admission_kernel.c):
a batch's distinct keys of all trained tables (the trainer's admission and forward, with the
fused bags' layout) and a table's active ids in order (its snapshots). torch.unique and
torch.sort compare-sort: 1.5-4.5x the CPU on these sizes (5k to 92k keys, 2026-12-07).

Shapes: n keys, U distinct.
"""

from __future__ import annotations

import torch

from dlrm_core.kernel import admission_kernel


def _keys(keys: torch.Tensor) -> torch.Tensor:
    if keys.dtype != torch.int64 or keys.dim() != 1:
        raise TypeError(f"keys must be 1-d int64, got {keys.dtype} {list(keys.shape)}")
    return keys.contiguous()


def batch_keys(
    values: list[torch.Tensor], offsets: list[torch.Tensor], key_offsets: list[int], rows: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Several features' bags as one EmbeddingBag input over one key space, feature t's ids
    (in [0, rows[t])) shifted by key_offsets[t] (ascending, ranges disjoint): (uniq (U,) the
    distinct keys sorted, index (n,) each value's among them, counts (U,), offsets (T * B,)
    feature t's B bags after those of the features before it, bounds (T + 1,) feature t's first
    key in uniq, then U), as torch.unique(keys, return_inverse=True, return_counts=True) and
    searchsorted would give them. IndexError for an id out of its rows."""
    batch = offsets[0].numel() if offsets else 0
    specs = []
    for v, o, key_offset, n in zip(values, offsets, key_offsets, rows, strict=True):
        if v.dtype != torch.int64 or o.dtype != torch.int64 or o.shape != (batch,):
            raise TypeError(f"values and offsets must be int64, offsets ({batch},) each")
        v, o = v.contiguous(), o.contiguous()
        specs.append((v.data_ptr(), v.numel(), o.data_ptr(), key_offset, n))
    total = sum(spec[1] for spec in specs)
    uniq, index, counts = torch.empty(3, total, dtype=torch.int64).unbind(0)
    fused = torch.empty(len(specs) * batch, dtype=torch.int64)
    bounds = torch.empty(len(specs) + 1, dtype=torch.int64)
    u = admission_kernel.batch_keys(
        tuple(specs),
        batch,
        uniq.data_ptr(),
        index.data_ptr(),
        counts.data_ptr(),
        fused.data_ptr(),
        bounds.data_ptr(),
    )
    return uniq[:u], index, counts[:u], fused, bounds


def sort(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.sort(keys, stable=True): the (n,) keys ascending and their positions."""
    keys = _keys(keys)
    n = keys.numel()
    # tensors of their own: a snapshot keeps ``ordered`` as its ids (and its bytes are counted)
    ordered, order = torch.empty(n, dtype=torch.int64), torch.empty(n, dtype=torch.int64)
    admission_kernel.argsort(keys.data_ptr(), n, ordered.data_ptr(), order.data_ptr())
    return ordered, order
