"""Rank controller and pruning for one LiveEmbedding, under a hard memory budget (its settings
and events: rank_policy.py; the SVD and basis math: factor_spectrum.py).

Rank, while the rows leave budget to spare: the fewest of A B's singular directions carrying
>= tau of its energy, or one more when the newest or the gradients outside span(B) carry much.
Once the rows fill the budget (rank costs rows), the rank (up to r_max, full rank D included)
capturing the most gradient energy, directions and rows alike (rank_choice.py). A re-factoring
puts A, B on the kept directions (B orthonormal) and folds what it drops, so no served row
changes. The start: the warm-up gradient Gram's top eigenvectors carrying tau of its energy.
Hysteresis: at most max_rank_changes_per_hour changes an hour, each winning by switch_margin.
Refused growths are RankEvents (kind "rank", from == to, reason "refused:<why>", coalesced).

Pruning: rows idle longer than max_age, or the least recently used rows when the budget is full,
leave the active set, folded into the base unless fold_evicted=False. Admission: with admit_after
> 1 an id gets a row on its admit_after-th recent sighting (a count-min sketch, admission.py). The
budget hard-limits the LiveEmbedding's bytes (from its tensors), the sketch and the Gram."""

from __future__ import annotations

import math

import torch

from dlrm_core import rank_choice
from dlrm_core.admission import SightingSketch
from dlrm_core.factor_spectrum import (
    FactoredRows,
    Svd,
    energy_rank,
    extend_basis,
    factor_svd,
    onto_basis,
    residual_gram,
    top_eigenvectors,
    truncate,
)
from dlrm_core.gradient_gram import PackedGram
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.lru import least_recent
from dlrm_core.rank_policy import RankEvent, RankPolicy, RefusalLog, min_budget_bytes
from dlrm_core.row_budget import FOLD_LOG_MIN, FOLD_LOG_SHARE, capacity_plan, floor_bytes

HOUR_S = 3600.0
SKETCH_PER_ROW = 8  # the sketch's width at most this many counters per row the budget holds
# a re-factoring folds a row's lost part into the base only where its L2 norm (times scale)
# passes this (served rows are guaranteed to 1e-5): rows that carry almost nothing cost no base
# write and no publish; a growth re-factors exactly up to float rounding, nothing to fold
FOLD_TOLERANCE = 1e-6


class RankController:
    """Owns the rank and the active set of one LiveEmbedding under ``budget_bytes``."""

    def __init__(
        self,
        live: LiveEmbedding,
        table: str,
        policy: RankPolicy,
        budget_bytes: int,
        published_copy: bool = False,
        node_key_bytes: int = 0,
    ) -> None:
        if policy.r_max > live.dim:
            raise ValueError(f"r_max {policy.r_max} exceeds the embedding dim {live.dim}")
        self.live = live
        self.table = table
        self.policy = policy
        self.events: list[RankEvent] = []
        self.sketch: SightingSketch | None = None
        self.published_copy = published_copy  # plan room for a published copy of the factors
        self.node_key_bytes = node_key_bytes  # > 0 on a node: plan its copies (row_budget.py)
        self._gen = torch.Generator().manual_seed(live.config.seed + 1)
        self._grad_gram = PackedGram(live.dim)  # since the last adapt
        self._refused = 0
        self._warm = False  # B has been set from the observed gradients
        self._last_adapt = self._full_at = -math.inf
        self._changes: list[float] = []  # times of the rank changes of the last hour
        self._refusals = RefusalLog(policy.refusal_report_s)
        live.grad_observer = self.observe_gradient
        self.budget_bytes = 0
        self.set_budget(budget_bytes, now=0.0)

    # ---- budget ------------------------------------------------------------------------
    def capacity(self, rank: int | None = None) -> tuple[int, int]:
        """(rows, index bits) that fit in the budget at ``rank`` (default: the current one)."""
        r = self.live.rank if rank is None else rank
        free = self.budget_bytes - (self.sketch.nbytes if self.sketch is not None else 0)
        live, node = self.live, self.node_key_bytes
        return capacity_plan(free, r, live.dim, self.published_copy, live.num_rows, node)

    def fits(self, rank: int) -> bool:
        """B, its optimizer state and the smallest index fit in the budget at ``rank``."""
        sketch = self.sketch.nbytes if self.sketch is not None else 0
        return floor_bytes(rank, self.live.dim, self.node_key_bytes) + sketch <= self.budget_bytes

    def max_rows(self, rank: int | None = None) -> int:
        """Active rows that fit in the budget at ``rank`` (default: the current rank)."""
        return self.capacity(rank)[0]

    def fold_log_room(self, rank: int | None = None) -> int:
        """Folded ids the fold log may still take before its allowance (at ``rank``) is spent."""
        return max(self.fold_log_allowance(rank) - self.live.folded_pending, 0)

    def fold_log_allowance(self, rank: int | None = None) -> int:
        return FOLD_LOG_MIN + self.max_rows(rank) // FOLD_LOG_SHARE

    def fold_log_over(self) -> bool:
        """The fold log holds more than its share of the budget: publish to drain it."""
        # asked every step: FOLD_LOG_MIN, the least allowance, settles most without the plan
        return (n := self.live.folded_pending) > FOLD_LOG_MIN and n > self.fold_log_allowance()

    def accounted_bytes(self) -> int:
        """Every byte this table holds that its budget caps: the LiveEmbedding's state, index
        and fold log, the sketch and the gradient Gram (row_budget.gram_bytes), measured from
        the tensors. (Published copies: see LiveTrainer.memory_account.)"""
        sketch = self.sketch.nbytes if self.sketch is not None else 0
        return self.live.memory().overhead_bytes + sketch + self.gram_bytes

    gram_bytes = property(lambda self: self._grad_gram.nbytes)  # row_budget.gram_bytes

    def set_budget(self, budget_bytes: int, now: float) -> None:
        """Change the budget; when it shrinks, evict LRU rows, then lower the rank, to fit.
        Evictions here may overfill the fold log: the publisher drains it next."""
        floor = min_budget_bytes(self.policy, self.live.dim, self.node_key_bytes)
        if budget_bytes < floor:
            raise ValueError(
                f"budget for table {self.table!r} is {budget_bytes} bytes, below the "
                f"{floor} bytes that B and its optimizer state need at r_min={self.policy.r_min}"
            )
        self.budget_bytes = int(budget_bytes)
        self._size_sketch()
        r = self.live.rank
        target = min(max(r, self.policy.r_min), self.policy.r_max)
        reason = "clamp"
        while target > self.policy.r_min and not self.fits(target):
            target, reason = target - 1, "budget"
        excess = self.live.num_active - self.max_rows(target)
        if excess > 0:
            self._evict(self._lru(excess, protect=None, now=now), now, "budget", capped=False)
        if target != r:
            self._refactor(target, now, reason)
        self.live.fit(self.max_rows())

    def _size_sketch(self) -> None:
        """sketch_share of the budget, and at most SKETCH_PER_ROW counters a row for the rows
        the rest of the budget holds (a huge budget needs no huge sketch)."""
        bits = 0
        if self.policy.admit_after > 1:
            sizes = (self.live.rank, self.live.dim, False, self.live.num_rows, self.node_key_bytes)
            rows = capacity_plan(self.budget_bytes, *sizes)[0]
            widest = max(rows * SKETCH_PER_ROW, 2).bit_length()
            share = int(self.budget_bytes * self.policy.sketch_share)
            # a budget holding every row of the table turns no id away: nothing to gate
            bits = min(SightingSketch.bits_for(share), widest) if rows < self.live.num_rows else 0
        if bits == 0:
            self.sketch = None
        elif self.sketch is None or self.sketch.width_bits != bits:
            self.sketch = SightingSketch(bits)

    # ---- active set --------------------------------------------------------------------
    def admit(self, values: torch.Tensor, now: float) -> int:
        """Touch ``values`` and admit new ones that passed the gate into the free room.
        Returns the number admitted. Ids refused for lack of room are counted (up to
        max_rows) for make_room."""
        admitted, refused = self.live.activate(values, now, self.max_rows(), self.passes)
        self.note_refused(refused)
        return admitted

    def passes(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """(k,) bool: which of the distinct inactive ``ids`` (k,), seen ``counts`` times in
        this batch, have been sighted admit_after times (the sighting is counted)."""
        if self.sketch is None:
            return torch.ones(ids.shape, dtype=torch.bool)
        return self.sketch.sight(ids, counts) >= self.policy.admit_after

    def note_refused(self, refused: int) -> None:
        """Count ids refused for lack of room (by admit, or by the trainer's fused admission)."""
        self._refused = min(self._refused + refused, self.max_rows())

    def make_room(self, protect: torch.Tensor, now: float) -> int:
        """Evict LRU rows (idle >= lru_min_age, not in ``protect``) for the ids admit refused
        since the last call, at least evict_batch of the rows at once (one LRU scan serves many
        steps).
        Separate from admit so that a trainer can skip a bad batch without having evicted
        anything for it. Returns rows evicted."""
        if self._refused <= 0 or self.live.num_active == 0:
            return 0
        count = max(self._refused, int(self.policy.evict_batch * self.max_rows()))
        self._refused = 0
        return self._evict(self._lru(count, protect=protect, now=now), now, "lru")

    def prune_idle(self, now: float) -> int:
        """Evict rows idle longer than max_age; returns how many."""
        if self.policy.max_age is None or self.live.num_active == 0:
            return 0
        old = self.live.ids[self.live.ages(now) > self.policy.max_age]
        return self._evict(old, now, "age")

    def _lru(self, count: int, protect: torch.Tensor | None, now: float) -> torch.Tensor:
        """Up to ``count`` least recently used ids, skipping ``protect`` and fresh rows, oldest
        first (of equal ages the higher row: lru.py)."""
        min_age = self.policy.lru_min_age
        return self.live.ids[least_recent(self.live, count, protect, now, min_age)]

    def _evict(self, rows: torch.Tensor, now: float, reason: str, capped: bool = True) -> int:
        """Evict ``rows``; when folding and ``capped``, only as many as the fold log has room
        for (the rest wait for the next publish to drain it)."""
        fold = self.policy.fold_evicted
        if fold and capped:
            rows = rows[: self.fold_log_room()]
        before = self.live.num_active
        removed = self.live.evict(rows, fold=fold)
        if removed:
            self._event(now, "prune", before, self.live.num_active, reason)
        return removed

    # ---- rank --------------------------------------------------------------------------
    def observe_gradient(self, grad: torch.Tensor) -> None:
        """Accumulate the D x D Gram matrix of a (B, D) output gradient (cheap per step);
        its part outside span(B) is measured against B at adapt time."""
        g = grad.detach().reshape(-1, self.live.dim)
        if not bool(torch.isfinite(g).all()):  # the trainer skips such a batch; so do we
            return
        self.observe_gram(g.T @ g)

    def observe_gram(self, gram: torch.Tensor) -> None:
        """Add the (D, D) Gram matrix of finite output gradients."""
        self._grad_gram.add(gram)

    def gram_pointer(self) -> int:
        """Where the fused path's kernel adds the Gram's packed upper triangle (gradient_gram),
        until an adapt."""
        return self._grad_gram.pointer()

    def residual_share(self) -> float:
        """Share of the observed gradient energy outside span(B) since the last adapt."""
        total = self._grad_gram.trace()
        outside = residual_gram(self.live.B.detach(), self._grad_gram.full())
        return float(torch.trace(outside)) / total if total > 0 else 0.0

    def adapt(self, now: float) -> int:
        """Choose the rank and re-factor A, B when it changes. A table whose rows fill its
        budget (or that a growth would make evict) weighs rank against rows by the gradient
        energy each captures (rank_choice.py), evicting the coldest rows for a growth; any
        other follows the spectrum and the gradient residual. Returns the new rank."""
        if not self._warm and self._grad_gram.trace() > 0:
            return self._adapted(now, self._warm_start(now))  # the warm-up picked rank and B
        r = self.live.rank
        target, reason, svd = self._wanted_rank()
        target = min(max(target, self.policy.r_min), self.policy.r_max)
        if svd is not None and self._rows_bound(now):
            target, reason = self._trade_rank_for_rows(now, svd, target > r)
        elif target > r and (refusal := self._growth_refusal(target, now)) is not None:
            self._refused_growth(now, r, refusal)
            target = r
        elif target < r and not self._may_change(now):
            target = r
        if target != r:  # a growth may have evicted rows since svd was taken
            self._refactor(target, now, reason, svd if target < r else None)
        return self._adapted(now, target)

    def _adapted(self, now: float, rank: int) -> int:
        self._grad_gram.reset()
        self._last_adapt = float(now)
        return rank

    def _wanted_rank(self) -> tuple[int, str, Svd | None]:
        """(rank, why, the SVD of A B it was read from: None without active rows)."""
        live, r = self.live, self.live.rank
        svd = factor_svd(live.A.detach(), live.B.detach()) if live.num_active else None
        energy = svd[1].pow(2) if svd is not None else torch.zeros(0)
        total, keep = float(energy.sum()), energy_rank(energy, self.policy.tau) or r
        newest = float(energy[-1]) / total if total > 0 and energy.numel() == r else 0.0
        target, reason = min(keep, r), "energy"
        if keep >= r and newest >= self.policy.grow_newest:
            target, reason = r + 1, "grow:newest"
        if self.residual_share() >= self.policy.grow_residual:
            target, reason = max(target, r + 1), "grow:residual"
        return target, reason, svd

    def _may_change(self, now: float) -> bool:
        """Hysteresis: fewer than max_rank_changes_per_hour changes in the last hour."""
        self._changes = [t for t in self._changes if t > now - HOUR_S]
        return len(self._changes) < self.policy.max_rank_changes_per_hour

    def _growth_refusal(self, target: int, now: float) -> str | None:
        """None when a growth to ``target`` that evicts no row may happen, else why not."""
        if not self._may_change(now):
            return "hysteresis"
        return None if self.fits(target) else "budget"

    def _rows_bound(self, now: float) -> bool:
        """Rank costs rows: they filled the budget in the last hour (a rebase's drops leave the
        demand as it was), or one more direction would evict some."""
        n, grown = self.live.num_active, min(self.live.rank + 1, self.policy.r_max)
        if n + self._turnover() >= self.max_rows():
            self._full_at = float(now)
        return n > 0 and (now - self._full_at < HOUR_S or n > self.max_rows(grown))

    def _turnover(self) -> int:
        """Two eviction batches: a table this close to its rows is full."""
        return max(1, math.ceil(2 * self.policy.evict_batch * self.max_rows()))

    def _trade_rank_for_rows(self, now: float, svd: Svd, asked: bool) -> tuple[int, str]:
        """(rank, why) of the most energy (rank_choice.py) for a table bound by its rows; a
        growth evicts the coldest. ``asked``: the spectrum asked to grow (refusals: events)."""
        gram = self._grad_gram.full()
        r, total, policy = self.live.rank, float(torch.trace(gram)), self.policy
        since = float(now) - self._last_adapt
        heat = rank_choice.row_heat(self.live.ages(now), since, policy.lru_min_age)
        energies = rank_choice.direction_energies(gram, svd[2], policy.r_max - r)
        room = self.fold_log_room if policy.fold_evicted else lambda k: self.live.num_active
        fitting = [k for k in range(policy.r_min, policy.r_max + 1) if self.fits(k)]
        row = heat.marginal(self._turnover(), total) if self._full_at == now else 0.0  # full
        options = rank_choice.rank_options(
            r, fitting, self.max_rows, energies, heat, total, room, row
        )
        best = rank_choice.best_option(options, r, policy.switch_margin * total)
        if asked and (best is None or best.rank < r):
            over = self.live.num_active - self.max_rows(r + 1)  # rows a growth by one evicts
            why = rank_choice.why_not_grown(options, r + 1, self.fits(r + 1), over, heat.evictable)
            self._refused_growth(now, r, why)
        if best is None:
            return r, ""
        if not self._may_change(now):
            if best.rank > r:
                self._refused_growth(now, r, "hysteresis")
            return r, ""
        if best.evict:
            self._evict(self._lru(best.evict, protect=None, now=now), now, "grow")
        return best.rank, "grow:energy" if best.rank > r else "shrink:energy"

    def _refused_growth(self, now: float, rank: int, why: str) -> None:
        """RankEvents for a refused growth (repeats coalesced: RefusalLog)."""
        for at, reason in self._refusals.note(float(now), why):
            self._event(at, "rank", rank, rank, reason)

    def _warm_start(self, now: float) -> int:
        """Put B onto the top eigenvectors of the gradient Gram observed so far, as many as
        carry tau of its energy (in [r_min, r_max], fewer if the active rows would not fit);
        the active rows' deltas projected onto them stay, the rest is folded. Returns the rank."""
        self._warm, policy, r = True, self.policy, self.live.rank
        gram = self._grad_gram.full()
        eig = torch.linalg.eigvalsh(gram).flip(0).clamp(min=0)  # largest first
        k = min(max(energy_rank(eig, policy.tau), policy.r_min), policy.r_max)
        while k > policy.r_min and not (self.fits(k) and self.live.num_active <= self.max_rows(k)):
            k -= 1
        basis = top_eigenvectors(gram, k)  # (D, k)
        a, lost = onto_basis(self.live.A.detach(), self.live.B.detach(), basis)
        self._set_folding(a, basis.T, lost)
        self._note_change(now, r, k, "warm:gram")
        return k

    def _set_folding(self, a: torch.Tensor, b: torch.Tensor, lost: FactoredRows | None) -> None:
        """set_factors(a, b), first folding ``lost`` (n, D), what A B loses by it, times scale
        into the base rows whose part passes FOLD_TOLERANCE (so no served row changes by more
        than that); None: it loses nothing. O(n j^2) to find the rows, O(rows folded x D) to
        fold them, never an (n, D) product."""
        live = self.live
        if lost is not None and live.num_active and self.policy.fold_evicted:
            rows = torch.nonzero(lost.row_norms() * live.scale > FOLD_TOLERANCE).squeeze(1)
            if rows.numel():
                with torch.no_grad():
                    lost.add_to(live.base.weight, rows, live.ids[rows], live.scale)
                live.note_folded(live.ids[rows])
        live.set_factors(a, b)

    def _refactor(self, k: int, now: float, reason: str, svd: Svd | None = None) -> None:
        """Put A B onto its top-k directions (padding with new ones: the residual's top
        eigenvector first, then random), B with orthonormal rows; what a shrink truncates is
        folded into the base. ``svd``: factor_svd of the current A, B when the caller has it."""
        live = self.live
        r, n, d = live.rank, live.num_active, live.dim
        lost = None
        if n:
            a, basis, lost = truncate(live.A.detach(), live.B.detach(), k, svd)  # (n, m), (D, m)
        else:
            a, basis = torch.zeros(0, 0), torch.zeros(d, 0)
        m = basis.shape[1]
        if k > m:
            outside = residual_gram(live.B.detach(), self._grad_gram.full())  # of span(B)
            first = top_eigenvectors(outside, 1)[:, 0]
            basis = extend_basis(basis, k - m, first, self._gen)
            a = torch.cat([a.reshape(n, m), torch.zeros(n, k - m)], dim=1)
        self._set_folding(a, basis.T, lost)
        self._note_change(now, r, k, reason)

    def _note_change(self, now: float, before: int, after: int, reason: str) -> None:
        """A rank change (if any) counts against hysteresis and is an event."""
        if after != before:
            self._changes.append(float(now))
            self._event(now, "rank", before, after, reason)

    def _event(self, now: float, kind: str, before: int, after: int, reason: str) -> None:
        self.events.append(RankEvent(float(now), self.table, kind, before, after, reason))
