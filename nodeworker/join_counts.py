"""The delayed-label join's counts over every join this node ran: the trainer process joins
(and reports its counts in its stats), a new trainer starts a new join, and a node without a
trainer joins in a thread of its own (nodeworker.trainer_client)."""

from __future__ import annotations

from nodeworker.feed import FeedReport

# rows a join holds: lost when it stops (waiting for a label, joined, in the trainer's backlog)
HELD = ("pending", "ready", "backlog_rows")


class JoinCounts:
    def __init__(self) -> None:
        self._current: dict[str, int] = {}  # the running join's last report
        self._before: dict[str, int] = {}  # the joins that stopped, summed

    def update(self, report: FeedReport) -> None:
        self._current = {
            **report.counts,
            **report.sizes,
            "dropped_backlog": report.dropped_backlog,
            "to_trainer": report.to_trainer,
        }

    def retire(self) -> None:
        """A new join starts: the old one's counts are kept, the rows it held count as lost."""
        current, self._current = self._current, {}
        lost = sum(current.pop(key, 0) for key in HELD)
        current.pop("held", None)  # a size, not a count
        current["lost"] = current.get("lost", 0) + lost
        for key, value in current.items():
            self._before[key] = self._before.get(key, 0) + value

    def totals(self) -> dict[str, int]:
        counts = dict(self._before)
        for key, value in self._current.items():
            counts[key] = counts.get(key, 0) + value
        return counts
