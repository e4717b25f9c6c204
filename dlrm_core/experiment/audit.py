"""The model-level leak audit: re-score with every label not yet due permuted.

A second replay, from the same pretrained base and the same seed, shows scoring every label
that is not due yet permuted within its batch (replay.PermutedLabels); labels still reach
training only when due, unchanged. A strategy whose served model never used a label before it
was due scores every event exactly as in the first replay; one that peeked scores differently.
The audit compares the two replays' scores bit for bit, per strategy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlrm_core.experiment.replay import StrategyTrace


@dataclass(frozen=True)
class StrategyAudit:
    events: int
    mismatched: int  # events scored differently once the not-yet-due labels were permuted
    max_abs_diff: float


@dataclass(frozen=True)
class LeakAudit:
    labels_changed: int  # labels the permutation actually changed (0: the audit saw nothing)
    strategies: dict[str, StrategyAudit]

    @property
    def passed(self) -> bool:
        return self.labels_changed > 0 and all(a.mismatched == 0 for a in self.strategies.values())

    def leaking(self) -> list[str]:
        return sorted(name for name, a in self.strategies.items() if a.mismatched)

    def as_dict(self) -> dict[str, object]:
        return {
            "kind": "model-level: re-scored with every not-yet-due label permuted",
            "passed": self.passed,
            "labels_changed": self.labels_changed,
            "leaking": self.leaking(),
            "strategies": {
                name: {"events": a.events, "mismatched": a.mismatched,
                       "max_abs_diff": a.max_abs_diff}
                for name, a in self.strategies.items()
            },
        }  # fmt: skip


def compare(
    main: dict[str, StrategyTrace], audited: dict[str, StrategyTrace], labels_changed: int
) -> LeakAudit:
    out = {}
    for name, trace in main.items():
        a = np.concatenate(trace.scores)
        b = np.concatenate(audited[name].scores)
        if a.shape != b.shape:
            raise AssertionError(f"{name}: the audit replay scored {b.size} events, not {a.size}")
        diff = np.abs(a - b)
        out[name] = StrategyAudit(int(a.size), int((a != b).sum()), float(diff.max(initial=0.0)))
    return LeakAudit(labels_changed, out)
