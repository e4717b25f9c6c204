"""Rank against rows under one budget, for a full table (rank.py's RankController.adapt).

A full table trades rank for rows: one more direction costs 4 bytes on every active row (plus
the index and fold log's share), paid by evicting the coldest rows; one direction less frees
room for as many rows more. Each candidate rank k is scored by the gradient energy observed
since the last adaptation that it captures:

    captured(k) = directions(k) + rows(k)

- directions(k): the energy of the gradient Gram G along the directions k keeps: for k <= r the
  top-k singular directions of A B (what truncate keeps), for k > r also the top k - r
  eigenvalues of G outside span(B) (what extend_basis adds, residual first);
- rows(k): minus the energy of the coldest rows a growth evicts, plus, for a shrink of a full
  table, as many more rows as it frees room for, each priced as a row at the margin (the
  coldest eviction batches held now, per row). A row's energy is its share of the rows touched
  since the last adaptation times the energy observed since then.

The best k wins when it captures at least ``margin`` of the observed energy more than the
current rank: full-rank rows (k = D) are a legal outcome, and they win when gradients spread
over many directions while the coldest rows see little of them.

Shapes: D dim, r current rank, n active rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from dlrm_core.factor_spectrum import residual_gram


@dataclass(frozen=True)
class RankOption:
    """One candidate rank of a full table: the rows it holds and the energy it captures."""

    rank: int
    rows: int  # the most active rows the budget holds at this rank
    evict: int  # rows a move to it evicts (0 for a shrink or the current rank)
    captured: float  # observed gradient energy it captures (directions + rows), see module


@dataclass(frozen=True)
class RowHeat:
    """The active rows coldest first: how many may be evicted (older than lru_min_age) and the
    running count of those touched since the last adaptation (cold_touched[m]: among the m
    coldest), out of ``touched`` in all."""

    evictable: int
    cold_touched: torch.Tensor  # (n + 1,) int64, cold_touched[0] = 0
    touched: int

    def marginal(self, rows: int, total: float) -> float:
        """Energy per row of the ``rows`` coldest: what a row at the margin is worth (the
        rows a shrink would admit are no warmer: the LRU turns them away now)."""
        return self.energy(rows, total) / rows if rows > 0 else 0.0

    def energy(self, rows: int, total: float) -> float:
        """Energy of the ``rows`` coldest rows, ``total`` the energy observed since then."""
        if self.touched == 0 or rows <= 0:
            return 0.0
        m = min(rows, self.cold_touched.numel() - 1)
        return total * int(self.cold_touched[m]) / self.touched


def row_heat(ages: torch.Tensor, since: float, lru_min_age: float) -> RowHeat:
    """RowHeat of the active rows of ``ages`` (n,) seconds idle; touched: idle <= ``since``."""
    order = torch.argsort(ages, descending=True)  # coldest first, as RankController._lru
    touched = (ages[order] <= since).to(torch.int64)
    cum = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(touched, 0)])
    return RowHeat(int((ages >= lru_min_age).sum()), cum, int(touched.sum()))


def direction_energies(
    gram: torch.Tensor, kept_dirs: torch.Tensor, extra: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """((r,) energy of ``gram`` (D, D) along each of the orthonormal current directions
    ``kept_dirs`` (D, r), strongest singular value first; (extra,) the top eigenvalues of
    ``gram`` projected outside their span, largest first)."""
    along = ((gram @ kept_dirs) * kept_dirs).sum(0).clamp(min=0)
    outside = torch.linalg.eigvalsh(residual_gram(kept_dirs.T, gram)).flip(0)
    return along, outside[:extra].clamp(min=0)


def rank_options(
    rank: int,
    ranks: list[int],
    rows_at: Callable[[int], int],
    energies: tuple[torch.Tensor, torch.Tensor],
    heat: RowHeat,
    total: float,
    evict_room: Callable[[int], int],
    row_energy: float,
) -> list[RankOption]:
    """The feasible RankOptions among ``ranks`` for a full table of n = heat's rows at
    ``rank``: ``rows_at(k)`` the rows the budget holds at k; ``energies`` from
    direction_energies; a growth to k may evict at most the evictable rows and
    ``evict_room(k)`` (what the fold log can take at k); a shrink's room holds rows of
    ``row_energy`` each (0: the table is not full, the room would stay empty)."""
    along, outside = energies
    n = heat.cold_touched.numel() - 1
    here = rows_at(rank)
    options = []
    for k in ranks:
        held = rows_at(k)
        if k <= rank:
            directions = float(along[:k].sum())
        else:
            directions = float(along.sum() + outside[: k - rank].sum())
        evict = max(n - held, 0)
        if evict and evict > min(heat.evictable, evict_room(k)):
            continue
        rows = -heat.energy(evict, total)
        if held > here:
            rows += (held - here) * row_energy
        options.append(RankOption(k, held, evict, directions + rows))
    return options


def best_option(options: list[RankOption], rank: int, margin: float) -> RankOption | None:
    """The option capturing the most, if it beats the current rank's by more than ``margin``
    (an absolute energy; ties go to the smaller change); None: stay."""
    current = next((o for o in options if o.rank == rank), None)
    if current is None:
        return None
    best = max(options, key=lambda o: (o.captured, -abs(o.rank - rank)))
    if best.rank == rank or best.captured - current.captured <= margin:
        return None
    return best


def why_not_grown(
    options: list[RankOption], up: int, fits_up: bool, over: int, evictable: int
) -> str:
    """Why a growth to ``up`` is not among the ``options`` that capture the most: ``fits_up``
    B fits the budget at ``up``, which would evict ``over`` rows, ``evictable`` may go."""
    if any(o.rank == up for o in options) or not fits_up:
        return "budget:rows capture more" if fits_up else "budget"
    return "budget:rows too fresh" if over > evictable else "budget:fold log full"
