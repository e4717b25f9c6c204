"""A LiveUpdate node's rank changes, counted from its trainer's RankEvents (issue 14's rank goal:
every big table grows at least once after its region is full, and no table changes rank more
than 6 times an hour).

A change is a "rank" event whose rank moved (a refused growth keeps it: counted apart). A
table's region is full from its first eviction for lack of room (a "lru" prune: admissions were
refused because its rows filled the budget).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dlrm_core.rank_policy import RankEvent

HOUR_S = 3600.0


@dataclass
class TableRanks:
    changes: list[tuple[float, int, int, str]] = field(default_factory=list)  # t, from, to, why
    refused: int = 0  # refused growths (coalesced events)
    full_at: float | None = None


class RankLog:
    def __init__(self, tables: Iterable[str]) -> None:
        self.tables = {name: TableRanks() for name in tables}

    def note(self, events: Iterable[RankEvent]) -> None:
        for e in events:
            table = self.tables[e.table]
            if e.kind == "prune" and e.reason == "lru" and table.full_at is None:
                table.full_at = e.timestamp
            elif e.kind == "rank" and e.from_value != e.to_value:
                table.changes.append((e.timestamp, e.from_value, e.to_value, e.reason))
            elif e.kind == "rank":
                table.refused += 1

    def summary(self, start_s: float, window_s: float, windows: int) -> dict[str, Any]:
        """Per table: rank changes per clock window of ``window_s`` from ``start_s``, the most
        in any hour (sliding), when its region first filled (s after ``start_s``; None:
        never), the growths from then on, the refused growths and every change."""
        out: dict[str, Any] = {}
        for name, t in self.tables.items():
            times = [c[0] for c in t.changes]
            per_window = [0] * windows
            for at in times:
                k = math.floor((at - start_s) / window_s)
                if 0 <= k < windows:
                    per_window[k] += 1
            most = max((bisect.bisect_left(times, at + HOUR_S) - i for i, at in
                        enumerate(times)), default=0)  # fmt: skip
            full = t.full_at
            out[name] = {
                "changes_per_window": per_window,
                "max_changes_in_an_hour": most,
                "full_after_s": None if full is None else full - start_s,
                "growths_after_full": sum(
                    1 for at, a, b, _ in t.changes if full is not None and at >= full and b > a
                ),
                "refused_growths": t.refused,
                "changes": [
                    {"after_s": at - start_s, "from": a, "to": b, "reason": why}
                    for at, a, b, why in t.changes
                ],
            }
        return out
