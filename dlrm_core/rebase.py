"""A delta rebase: a node adopts the cluster's newer rows and MLPs, keeping its other corrections.

The hybrid strategy runs LiveUpdate between rebases. At each rebase the cluster sends the rows it
changed since the last one (ids (m,), rows (m, D) per table) and its MLP parameters. The node
overwrites those base rows, drops their local correction (the cluster's row already holds what
the fleet learnt about that id, so keeping the node's delta on top would count it twice) and
keeps every other row's correction, so what it learnt about ids the cluster did not touch
survives the rebase.

A rebase lands a transfer time after its snapshot. What the node learnt about a carried row in
between is in neither the cluster's row nor the node's state at the snapshot, so with an
``anchor`` (the node's served rows at the snapshot time, ``anchor_rows``) the node carries it
over: the new row is the cluster's row plus the node's change since the snapshot
(served now - served then).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.model import DLRM, table_bag


@dataclass(frozen=True)
class RowAnchor:
    """The node's served rows (m, D) at a snapshot time for ids (m,) sorted: the ids of a
    rebase's rows that held a correction then (any other row served its base row)."""

    ids: torch.Tensor
    rows: torch.Tensor


def served_rows(table: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """(m, D) rows ``ids`` as ``table`` serves them: base row plus correction."""
    rows = table_bag(table).weight.detach()[ids].clone()
    if isinstance(table, LiveEmbedding) and table.num_active:
        rows += table.get_delta_weight(ids)
    return rows


def anchor_rows(table: nn.Module, ids: torch.Tensor) -> RowAnchor:
    """The served rows of those of ``ids`` that hold a correction now (a rebase's anchor)."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if isinstance(table, LiveEmbedding) and table.num_active:
        ids = ids[table.slots(ids)[1]]
    else:
        ids = ids[:0]
    return RowAnchor(ids, served_rows(table, ids))


def carried_change(table: nn.Module, ids: torch.Tensor, anchor: RowAnchor) -> torch.Tensor:
    """(m, D) the node's change of rows ``ids`` since ``anchor`` was taken: served now minus
    served then (the anchor's row, or the base row now for an id the anchor does not hold)."""
    then = table_bag(table).weight.detach()[ids].clone()
    if anchor.ids.numel():
        pos = torch.searchsorted(anchor.ids, ids).clamp_(max=anchor.ids.numel() - 1)
        held = anchor.ids[pos] == ids
        then[held] = anchor.rows[pos[held]]
    return served_rows(table, ids) - then


def rebase_rows(
    table: nn.Module, ids: torch.Tensor, rows: torch.Tensor, anchor: RowAnchor | None = None
) -> int:
    """Overwrite base rows ``ids`` (m,) of ``table`` with ``rows`` (m, D), plus the node's change
    since ``anchor`` when given; a LiveEmbedding also drops those rows' correction (not
    folded). Returns the number of corrections dropped."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if rows.dim() != 2 or rows.shape[0] != ids.numel():
        raise ValueError(f"rows must be (m, D) with m = {ids.numel()}, got {tuple(rows.shape)}")
    rows = rows.to(torch.float32)
    if anchor is not None:
        rows = rows + carried_change(table, ids, anchor)
    dropped = 0
    if isinstance(table, LiveEmbedding) and table.num_active:
        dropped = table.evict(ids, fold=False)
    weight = table_bag(table).weight
    with torch.no_grad():
        weight[ids] = rows.to(weight.dtype)
    return dropped


def delta_rebase(
    model: DLRM,
    tables: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    dense: Mapping[str, torch.Tensor],
    anchors: Mapping[str, RowAnchor] | None = None,
) -> dict[str, int]:
    """Apply a rebase to ``model``: ``tables`` name -> (ids (m,), rows (m, D)); ``dense`` the
    MLPs' parameters by name; ``anchors`` the node's rows at the snapshot per table (their
    change since is carried over). Returns the corrections dropped per table."""
    dropped = {}
    for name, (ids, rows) in tables.items():
        anchor = anchors.get(name) if anchors is not None else None
        dropped[name] = rebase_rows(model.sparse_arch.table(name), ids, rows, anchor)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in dense.items():
            params[name].copy_(value)
    return dropped
