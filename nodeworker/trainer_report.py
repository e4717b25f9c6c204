"""What the trainer process tells the node in its stats (TrainerStats) besides its counters: its
memory by table and its events as node events."""

from __future__ import annotations

from collections.abc import Iterable

from dlrm_core.memory_account import MemoryAccount
from dlrm_core.rank_policy import RankEvent
from nodeworker.trainer_messages import TrainerEvent


def memory_by_table(account: MemoryAccount, join_bytes: int) -> dict[str, tuple[int, int]]:
    """table -> (overhead bytes, base bytes): each table's capped parts plus its share (by its
    share of the budget) of the capped parts besides the tables (backlog, top-layer tuning);
    the join's arenas (``join_bytes``), beside the cap, are reported in the feed's report."""
    rest = account.total - sum(t.total for t in account.tables.values()) - join_bytes
    budget = max(1, account.budget)
    return {
        name: (t.total + rest * t.budget // budget, t.base) for name, t in account.tables.items()
    }


def trainer_events(events: Iterable[RankEvent]) -> tuple[TrainerEvent, ...]:
    """The trainer's rank changes and prunes as node events."""
    return tuple(
        TrainerEvent(
            "rank_change" if e.kind == "rank" else "prune",
            e.timestamp,
            {"table": e.table, "from": e.from_value, "to": e.to_value, "reason": e.reason},
        )
        for e in events
    )
