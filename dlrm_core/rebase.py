"""A delta rebase: a node adopts the cluster's newer rows and MLPs, keeping its other corrections.

The hybrid strategy runs LiveUpdate between rebases. At each rebase the cluster sends the rows it
changed since the last one (ids (m,), rows (m, D) per table) and its MLP parameters. The node
overwrites those base rows, drops their local correction (the cluster's row already holds what
the fleet learnt about that id, so keeping the node's delta on top would count it twice) and
keeps every other row's correction, so what it learnt about ids the cluster did not touch
survives the rebase.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.model import DLRM


def rebase_rows(table: nn.Module, ids: torch.Tensor, rows: torch.Tensor) -> int:
    """Overwrite base rows ``ids`` (m,) of ``table`` with ``rows`` (m, D); a LiveEmbedding also
    drops those rows' correction (not folded). Returns the number of corrections dropped."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if rows.dim() != 2 or rows.shape[0] != ids.numel():
        raise ValueError(f"rows must be (m, D) with m = {ids.numel()}, got {tuple(rows.shape)}")
    dropped = 0
    if isinstance(table, LiveEmbedding):
        dropped = table.evict(ids, fold=False) if table.num_active else 0
        table = table.base
    weight = table.weight
    assert isinstance(weight, torch.Tensor)
    with torch.no_grad():
        weight[ids] = rows.to(weight.dtype)
    return dropped


def delta_rebase(
    model: DLRM,
    tables: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    dense: Mapping[str, torch.Tensor],
) -> dict[str, int]:
    """Apply a rebase to ``model``: ``tables`` name -> (ids (m,), rows (m, D)); ``dense`` the
    MLPs' parameters by name. Returns the corrections dropped per table."""
    dropped = {}
    for name, (ids, rows) in tables.items():
        dropped[name] = rebase_rows(model.sparse_arch.table(name), ids, rows)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in dense.items():
            params[name].copy_(value)
    return dropped
