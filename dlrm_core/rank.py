"""Rank controller and pruning for one LiveEmbedding, under a hard memory budget.

Rank: factor A B through QR of A (n, r) and of B^T (D, r) and the SVD of the small r x r core
(never forming the n x D delta), keep the smallest k whose singular values carry >= tau of the
energy, clamp to [r_min, r_max] and to the budget, and re-factor A, B onto those k directions
(B gets orthonormal rows). Grow by one direction when the newest component still carries much
energy or when fresh gradients have much energy outside span(B).

Pruning: rows idle longer than max_age, or the least recently used rows when the budget is full,
leave the active set; their delta is folded into the node's base copy unless fold_evicted=False.

The budget is a hard limit: every operation here plans with live_embedding.overhead_bytes, so
the LiveEmbedding's reported overhead never exceeds it (see the hypothesis test).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlrm_core.live_embedding import LiveEmbedding, overhead_bytes, row_bytes, shared_bytes


@dataclass(frozen=True)
class RankPolicy:
    tau: float = 0.95  # energy share the kept components must carry
    r_min: int = 1
    r_max: int = 16
    grow_newest: float = 0.15  # grow when the last component carries >= this energy share
    grow_residual: float = 0.5  # grow when >= this share of gradient energy is outside span(B)
    max_age: float | None = None  # seconds idle before a row is evicted (None: never by age)
    lru_min_age: float = 0.0  # rows used more recently than this are never evicted for room
    evict_batch: float = 1 / 64  # a full table evicts at least this share of its rows at once
    fold_evicted: bool = True  # fold evicted rows into the base copy (else discard)

    def __post_init__(self) -> None:
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        if not 1 <= self.r_min <= self.r_max <= 1024:
            raise ValueError(f"need 1 <= r_min <= r_max <= 1024, got {self.r_min}, {self.r_max}")
        for name in ("grow_newest", "grow_residual"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.max_age is not None and not (self.max_age > 0 and math.isfinite(self.max_age)):
            raise ValueError(f"max_age must be a positive number of seconds, got {self.max_age}")
        if not 0.0 <= self.evict_batch <= 0.5:
            raise ValueError(f"evict_batch must be in [0, 0.5], got {self.evict_batch}")
        if not (self.lru_min_age >= 0 and math.isfinite(self.lru_min_age)):
            raise ValueError(f"lru_min_age must be >= 0 seconds, got {self.lru_min_age}")


@dataclass(frozen=True)
class RankEvent:
    """A rank change (kind "rank": from/to are ranks) or a prune (kind "prune": from/to are
    active row counts)."""

    timestamp: float
    table: str
    kind: str
    from_value: int
    to_value: int
    reason: str


def observe_grams(controllers: list[RankController], grams: torch.Tensor) -> None:
    """RankController.observe_gram of each controller with its row of grams (T, D, D), in one
    op (the fused trainer path observes all tables of a group at once)."""
    if controllers:
        torch._foreach_add_([c._grad_gram for c in controllers], list(grams.unbind(0)))


def min_budget_bytes(policy: RankPolicy, dim: int) -> int:
    """The smallest budget a table can hold: B and its optimizer state at r_min, no rows."""
    return shared_bytes(policy.r_min, dim)


class RankController:
    """Owns the rank and the active set of one LiveEmbedding under ``budget_bytes``."""

    def __init__(
        self, live: LiveEmbedding, table: str, policy: RankPolicy, budget_bytes: int
    ) -> None:
        if policy.r_max > live.dim:
            raise ValueError(f"r_max {policy.r_max} exceeds the embedding dim {live.dim}")
        self.live = live
        self.table = table
        self.policy = policy
        self.events: list[RankEvent] = []
        self._gen = torch.Generator().manual_seed(live.config.seed + 1)
        self._reset_gradient_stats()
        self._refused = 0
        live.grad_observer = self.observe_gradient
        self.budget_bytes = 0
        self.set_budget(budget_bytes, now=0.0)

    # ---- budget ------------------------------------------------------------------------
    def max_rows(self, rank: int | None = None) -> int:
        """Active rows that fit in the budget at ``rank`` (default: the current rank)."""
        r = self.live.rank if rank is None else rank
        free = self.budget_bytes - shared_bytes(r, self.live.dim)
        return max(free // row_bytes(r), 0)

    def set_budget(self, budget_bytes: int, now: float) -> None:
        """Change the budget; when it shrinks, evict LRU rows, then lower the rank, to fit."""
        floor = min_budget_bytes(self.policy, self.live.dim)
        if budget_bytes < floor:
            raise ValueError(
                f"budget for table {self.table!r} is {budget_bytes} bytes, below the "
                f"{floor} bytes that B and its optimizer state need at r_min={self.policy.r_min}"
            )
        self.budget_bytes = int(budget_bytes)
        r = self.live.rank
        target = min(max(r, self.policy.r_min), self.policy.r_max)
        reason = "clamp"
        while target > self.policy.r_min and shared_bytes(target, self.live.dim) > budget_bytes:
            target, reason = target - 1, "budget"
        if target != r:
            self._refactor(target, now, reason)
        excess = self.live.num_active - self.max_rows()
        if excess > 0:
            self._evict(self._lru(excess, protect=None, now=now), now, "budget")

    @property
    def overhead_bytes(self) -> int:
        return self.live.memory().overhead_bytes

    # ---- active set --------------------------------------------------------------------
    def admit(self, values: torch.Tensor, now: float) -> int:
        """Touch ``values`` and admit new ones into the free room. Returns the number admitted.
        Ids refused for lack of room are counted (up to max_rows) for make_room."""
        admitted, refused = self.live.activate(values, now, self.max_rows())
        self.note_refused(refused)
        return admitted

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
        """Up to ``count`` least recently used ids, skipping ``protect`` and fresh rows."""
        ages = self.live.ages(now)
        ages[ages < self.policy.lru_min_age] = -math.inf
        if protect is not None:
            pos, hit = self.live.slots(torch.unique(protect))
            ages[pos[hit]] = -math.inf
        oldest = torch.topk(ages, min(count, ages.numel())).indices  # O(n), no full sort
        return self.live.ids[oldest[torch.isfinite(ages[oldest])]]

    def _evict(self, rows: torch.Tensor, now: float, reason: str) -> int:
        before = self.live.num_active
        removed = self.live.evict(rows, fold=self.policy.fold_evicted)
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
        """Add the (D, D) Gram matrix of finite output gradients (the fused trainer path
        computes those of all its tables in one bmm)."""
        self._grad_gram += gram

    def _reset_gradient_stats(self) -> None:
        self._grad_gram = torch.zeros(self.live.dim, self.live.dim)

    def _residual_gram(self) -> torch.Tensor:
        """(D, D) Gram matrix of the observed gradients projected outside span(B)."""
        q, _ = torch.linalg.qr(self.live.B.detach().T)  # (D, r) orthonormal basis of span(B)
        perp = torch.eye(self.live.dim) - q @ q.T
        return perp @ self._grad_gram @ perp

    def residual_share(self) -> float:
        """Share of the observed gradient energy outside span(B) since the last adapt."""
        total = float(torch.trace(self._grad_gram))
        return float(torch.trace(self._residual_gram())) / total if total > 0 else 0.0

    def spectrum(self) -> torch.Tensor:
        """(r,) singular values of A B * scale, through QR of A and B^T and the r x r core."""
        _, _, s, _ = self._svd()
        full = torch.zeros(self.live.rank)
        full[: s.numel()] = s * self.live.scale
        return full

    def _svd(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """A B = (qa u) diag(s) (qb v)^T; qa (n, m), u (m, m'), s (m',), v (r, m')."""
        a, b = self.live.A.detach(), self.live.B.detach()
        qa, ra = torch.linalg.qr(a)  # (n, m), (m, r), m = min(n, r)
        qb, rb = torch.linalg.qr(b.T)  # (D, r), (r, r)
        u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)  # core (m, r)
        return qa, u, s, (qb @ vh.T)  # last: (D, m') directions in embedding space

    def adapt(self, now: float) -> int:
        """Choose the rank from the spectrum and the gradient residual and re-factor A, B
        when it changes. Returns the new rank."""
        r = self.live.rank
        energy = (self._svd()[2] if self.live.num_active else torch.zeros(0)).pow(2)
        total = float(energy.sum())
        reason = "energy"
        if total > 0:
            share = torch.cumsum(energy, 0) / total
            keep = int(torch.searchsorted(share, torch.tensor([self.policy.tau - 1e-7]))) + 1
            newest = float(energy[-1]) / total if energy.numel() == r else 0.0
        else:
            keep, newest = r, 0.0
        target = min(keep, r)
        if keep >= r and newest >= self.policy.grow_newest:
            target, reason = r + 1, "grow:newest"
        if self.residual_share() >= self.policy.grow_residual:
            target, reason = max(target, r + 1), "grow:residual"
        target = min(max(target, self.policy.r_min), self.policy.r_max)
        # a bigger rank must fit with the rows already active; otherwise keep r
        if target > r and overhead_bytes(self.live.num_active, target, self.live.dim) > (
            self.budget_bytes
        ):
            target, reason = r, "budget"
        if target != r:
            self._refactor(target, now, reason)
        self._reset_gradient_stats()
        return target

    def _refactor(self, k: int, now: float, reason: str) -> None:
        """Put A B onto its top-k directions (padding with new ones: the residual's top
        eigenvector first, then random), B with orthonormal rows; delta kept up to truncation."""
        live = self.live
        r, n, d = live.rank, live.num_active, live.dim
        if n:
            qa, u, s, dirs = self._svd()
            m = min(k, s.numel())
            a = (qa @ u[:, :m]) * s[:m]  # (n, m)
            basis = dirs[:, :m]  # (D, m)
        else:
            a, basis = torch.zeros(0, 0), torch.zeros(d, 0)
            m = 0
        if k > m:
            basis = self._extend_basis(basis, k - m)
            a = torch.cat([a.reshape(n, m), torch.zeros(n, k - m)], dim=1)
        live.set_factors(a, basis.T)
        if k != r:
            self._event(now, "rank", r, k, reason)

    def _extend_basis(self, basis: torch.Tensor, extra: int) -> torch.Tensor:
        """(D, m) orthonormal -> (D, m + extra) orthonormal, residual gradient direction first."""
        d, want = basis.shape[0], basis.shape[1] + extra
        candidate = torch.linalg.eigh(self._residual_gram()).eigenvectors[:, -1]
        out = basis
        for _ in range(want + 100):  # random vectors leave the span almost surely
            if out.shape[1] == want:
                return out
            v = candidate - out @ (out.T @ candidate)
            if float(v.norm()) > 1e-4:
                out = torch.cat([out, (v / v.norm()).unsqueeze(1)], dim=1)
            candidate = torch.randn(d, generator=self._gen)
        raise RuntimeError(f"could not extend a ({d}, {basis.shape[1]}) basis by {extra}")

    def _event(self, now: float, kind: str, before: int, after: int, reason: str) -> None:
        self.events.append(RankEvent(float(now), self.table, kind, before, after, reason))
