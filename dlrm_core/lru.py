"""The least recently used rows of a LiveEmbedding: the rows RankController.make_room evicts to
make room for the ids admission refused. One call into the admission kernel (its ``lru``): the
ages in float64 as LiveEmbedding.ages has them, the protected ids looked up in the table's index,
the oldest rows by a heap. Oldest first; of rows of equal age (a batch stamps all its rows with
one time) the higher row first, so the pick is the same on every run and platform (torch.topk
leaves the order of ties open), and it takes the tail first, whose rows LiveEmbedding.evict's
compaction need not move.
"""

from __future__ import annotations

import torch

from dlrm_core.kernel import admission_kernel
from dlrm_core.live_embedding import LiveEmbedding


def least_recent(
    live: LiveEmbedding, count: int, protect: torch.Tensor | None, now: float, min_age: float
) -> torch.Tensor:
    """(k,) int64, k <= ``count``: the active rows idle at least ``min_age`` seconds at ``now``
    whose ids are not in ``protect`` (any integer ids, repeats allowed), oldest first."""
    n = live.num_active
    used = live.last_used
    if used.dtype != torch.float32 or not used.is_contiguous() or used.numel() != n:
        raise RuntimeError("a LiveEmbedding's last use must be n contiguous float32")
    origin = live.time_origin if live.time_origin is not None else float(now)
    ids = torch.zeros(0, dtype=torch.int64) if protect is None else protect.to(torch.int64)
    ids = ids.contiguous()
    out = torch.empty(max(min(count, n), 0), dtype=torch.int64)
    found = admission_kernel.lru(
        live.index.kernel_spec,
        used.data_ptr(),
        n,
        float(now) - origin,
        float(min_age),
        ids.data_ptr(),
        ids.numel(),
        out.numel(),
        out.data_ptr(),
    )
    return out[:found]
