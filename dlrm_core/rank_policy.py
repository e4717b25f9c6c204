"""What a rank controller (rank.py) is told and what it reports: the RankPolicy (rank bounds,
growth thresholds, eviction, admission and hysteresis settings), the RankEvents it records, and
the smallest budget a table can hold under a policy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlrm_core.row_budget import floor_bytes


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
    admit_after: int = 2  # sightings before an id gets a row (1: every id, no sketch)
    sketch_share: float = 1 / 16  # of the budget, for the sightings sketch
    max_rank_changes_per_hour: int = 6
    # a full table changes rank only when the new (rank, rows) captures this share of the
    # observed gradient energy more than the current one (rank_choice.py)
    switch_margin: float = 0.02
    refusal_report_s: float = 60.0  # refused growths within this are one event with a count

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
        if not 1 <= self.admit_after <= 15:
            raise ValueError(f"admit_after must be in [1, 15], got {self.admit_after}")
        if not 0.0 < self.sketch_share <= 0.5:
            raise ValueError(f"sketch_share must be in (0, 0.5], got {self.sketch_share}")
        if not 1 <= self.max_rank_changes_per_hour <= 3600:
            raise ValueError(
                f"max_rank_changes_per_hour must be in [1, 3600], got "
                f"{self.max_rank_changes_per_hour}"
            )
        if not 0.0 <= self.switch_margin <= 1.0:
            raise ValueError(f"switch_margin must be in [0, 1], got {self.switch_margin}")
        if not (0 <= self.refusal_report_s <= 86400):
            raise ValueError(f"refusal_report_s must be in [0, 86400], got {self.refusal_report_s}")


@dataclass(frozen=True)
class RankEvent:
    """A rank change (kind "rank": from/to are ranks; from == to for a refused growth, reason
    "refused:<why>") or a prune (kind "prune": from/to are active row counts)."""

    timestamp: float
    table: str
    kind: str
    from_value: int
    to_value: int
    reason: str


class RefusalLog:
    """Refused growths as events: the first of a reason at once, its repeats within
    ``report_s`` counted into one event (with "xN") when the next differs or comes later."""

    def __init__(self, report_s: float) -> None:
        self.report_s = report_s
        self._pending: tuple[float, str, int] | None = None  # first time, reason, count

    def note(self, now: float, why: str) -> list[tuple[float, str]]:
        """The (time, "refused:...") events to record for a refusal at ``now``."""
        pending = self._pending
        if pending is not None and pending[1] == why and now - pending[0] < self.report_s:
            self._pending = (pending[0], why, pending[2] + 1)
            return []
        out = []
        if pending is not None and pending[2] > 1:
            out.append((pending[0], f"refused:{pending[1]} x{pending[2]}"))
        self._pending = (now, why, 1)
        return [*out, (now, f"refused:{why}")]


def min_budget_bytes(policy: RankPolicy, dim: int, node_key_bytes: int = 0) -> int:
    """The smallest budget a table can hold: B and its optimizer state at r_min, the smallest
    index and fold log, no rows (on a node, ``node_key_bytes`` > 0: its copies' floor too)."""
    return floor_bytes(policy.r_min, dim, node_key_bytes)
