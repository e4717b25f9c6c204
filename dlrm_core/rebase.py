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

The anchor is bounded (one rule for the node, nodeworker/trainer_rebase.py, and the experiment's
hybrid, dlrm_core/experiment/liveupdate.py): a table keeps the ids of its corrected rows and the
served rows of the most recently used of them that fit its cap (``recent_anchor``), the caps
being ANCHOR_SHARE of the memory budget, reserved from it while a rebase period is set. At landing
a row anchored, or not corrected at the snapshot, carries its change since; a row corrected then
but not anchored is overwritten and its correction dropped (``SnapshotAnchor.carries``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.model import DLRM, table_bag

# the share of the memory budget a delta rebase's anchor may hold while a rebase period is set,
# reserved from the budget (nodeworker/node_budget.py, the experiment's table_budgets). Chosen
# on the 2M-event synthetic stream (docs/RESULTS.md's command, 20-min rebases, seeds 0-2): 0.10
# anchors 230-850 of a big table's 8-13k corrected rows and costs 0.0007-0.0010 of mean AUC
# against anchoring every one; 0.20 (2.1-2.7k of 7.5-12k) is within 0.0003, 0.30 no better.
ANCHOR_SHARE = 0.20
ID_BYTES = 8  # an anchor's id


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


@dataclass(frozen=True)
class SnapshotAnchor:
    """What a node keeps of one table from a rebase's snapshot until its rows land: the ids
    (n,) sorted that held a correction then, and the anchor of those it had room for."""

    active: torch.Tensor
    anchor: RowAnchor

    @property
    def nbytes(self) -> int:
        held = self.anchor.ids.numel() * ID_BYTES + self.anchor.rows.numel() * 4
        return ID_BYTES * self.active.numel() + held

    def carries(self, ids: torch.Tensor) -> torch.Tensor:
        """(m,) bool: which of ``ids`` carry their change since the snapshot (anchored, or not
        corrected then); the others were corrected then but not anchored."""
        return torch.isin(ids, self.anchor.ids) | ~torch.isin(ids, self.active)


def anchor_caps(anchor_bytes: int, budgets: Mapping[str, int]) -> dict[str, int]:
    """``anchor_bytes`` split over the trained tables in proportion to their ``budgets``."""
    total = max(1, sum(budgets.values()))
    return {name: anchor_bytes * b // total for name, b in budgets.items()}


def recent_anchor(table: nn.Module, cap: int, now: float) -> SnapshotAnchor | None:
    """The anchor of ``table`` at time ``now`` within ``cap`` bytes: the ids of its corrected
    rows and the served rows of the most recently used of them that fit; None when the cap
    does not hold even the ids (then every corrected row is overwritten and dropped)."""
    if not isinstance(table, LiveEmbedding) or not table.num_active:
        return None
    ids = table.ids
    room = cap - ID_BYTES * ids.numel()
    if room < 0:
        return None
    hottest = ids[torch.argsort(table.ages(now))[: room // (ID_BYTES + 4 * table.dim)]]
    return SnapshotAnchor(torch.sort(ids).values, anchor_rows(table, torch.sort(hottest).values))


def carry(
    table: nn.Module, ids: torch.Tensor, rows: torch.Tensor, held: SnapshotAnchor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cluster's ``rows`` (m, D) of ``ids`` plus the node's change since ``held`` was taken
    where it carries (SnapshotAnchor.carries); and (m,) which rows that changed."""
    rows = rows.to(torch.float32).clone()
    move = held.carries(ids)
    change = carried_change(table, ids[move], held.anchor)
    rows[move] += change
    moved = torch.zeros_like(move)
    moved[move] = change.ne(0).any(dim=1)
    return rows, moved


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
    table: nn.Module, ids: torch.Tensor, rows: torch.Tensor, anchor: SnapshotAnchor | None = None
) -> int:
    """Overwrite base rows ``ids`` (m,) of ``table`` with ``rows`` (m, D), plus the node's change
    since ``anchor`` where it carries (``carry``); a LiveEmbedding also drops those rows'
    correction (not folded). Returns the number of corrections dropped."""
    ids = torch.as_tensor(ids, dtype=torch.int64)
    if rows.dim() != 2 or rows.shape[0] != ids.numel():
        raise ValueError(f"rows must be (m, D) with m = {ids.numel()}, got {tuple(rows.shape)}")
    rows = rows.to(torch.float32)
    if anchor is not None:
        rows = carry(table, ids, rows, anchor)[0]
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
    anchors: Mapping[str, SnapshotAnchor] | None = None,
) -> dict[str, int]:
    """Apply a rebase to ``model``: ``tables`` name -> (ids (m,), rows (m, D)); ``dense`` the
    MLPs' parameters by name; ``anchors`` what the node kept at the snapshot per table (the
    change since of the rows they carry is carried over). Returns the corrections dropped per
    table."""
    dropped = {}
    for name, (ids, rows) in tables.items():
        anchor = anchors.get(name) if anchors is not None else None
        dropped[name] = rebase_rows(model.sparse_arch.table(name), ids, rows, anchor)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in dense.items():
            params[name].copy_(value)
    return dropped
