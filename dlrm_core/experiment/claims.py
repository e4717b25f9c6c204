"""The paper's claims as verdicts that can fail, each with the measurement and the reason.

- accuracy: the relative AUC gain of LiveUpdate over delta_sync, as a 95% t-interval over seeds
  (over windows when there is one seed, which the verdict says): "within the claimed range"
  (the whole interval inside it), "above the claimed range" or "below the claimed range" (the
  whole interval past it, 0 included), else "not significant" (no interval, or one that
  overlaps the range and reaches past it: it neither confirms nor refutes the claim);
- update_cost: fleet CPU-seconds to produce and install the served update (delta_sync: the
  cluster's training once + every node's sync work; LiveUpdate: every node's local training),
  as the ratio delta_sync / LiveUpdate with its interval over seeds; held when the whole
  interval is >= the claimed ratio;
- memory: the peak bytes of the tensors LiveUpdate's node actually holds for updating
  (measured by walking them, not by the formula its budget enforces), against the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from dlrm_core.experiment.stats import Interval, t_interval

CLAIM_MEMORY_PCT = 2.0
CLAIM_COST_RATIO = 2.0
CLAIM_GAIN_RANGE_PCT = (0.04, 0.24)
WITHIN, ABOVE, BELOW = (
    "within the claimed range",
    "above the claimed range",
    "below the claimed range",
)
NOT_SIGNIFICANT, HELD, NOT_HELD, NOT_MEASURED = (
    "not significant",
    "held",
    "not held",
    "not measured",
)


@dataclass(frozen=True)
class Verdict:
    id: str
    claim: str
    verdict: str
    held: bool | None
    measured: str | None
    why: str
    interval: dict[str, float | int] | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def _ci(ci: Interval) -> str:
    return f"{ci.mean:+.3f}% (95% CI {ci.lo:+.3f}..{ci.hi:+.3f}%, n={ci.n})"


def accuracy_verdict(
    gains_pct: Sequence[float | None],
    replicates: str,
    claimed: tuple[float, float] = CLAIM_GAIN_RANGE_PCT,
) -> Verdict:
    """``gains_pct``: one relative AUC gain (%) per replicate (``replicates``: "seeds" or
    "windows of one seed")."""
    lo, hi = claimed
    text = f"accuracy +{lo}..{hi}% over delta update"
    ci = t_interval(gains_pct)
    if ci is None:
        return Verdict("accuracy", text, NOT_MEASURED, None, None, "no comparable window")
    measured = f"relative AUC gain of liveupdate over delta_sync {_ci(ci)} over {replicates}"
    verdict, why = _range_verdict(ci, lo, hi)
    return Verdict("accuracy", text, verdict, verdict == WITHIN, measured, why, ci.as_dict())


def _range_verdict(ci: Interval, lo: float, hi: float) -> tuple[str, str]:
    """Where the 95% interval lies against the claimed range [lo, hi]: wholly inside it,
    wholly above it, wholly below it (0 included: a gain that cannot reach +lo refutes the
    claim), else not significant (one replicate; or it holds 0, or it reaches past a bound)."""
    if ci.n < 2:
        return NOT_SIGNIFICANT, "one replicate gives no interval"
    if ci.hi < lo:
        return BELOW, f"the whole interval is below +{lo}%"
    if ci.lo > hi:
        return ABOVE, f"the whole interval is above +{hi}%: the gain is larger than claimed"
    if lo <= ci.lo and ci.hi <= hi:
        return WITHIN, ""
    if ci.lo <= 0.0:
        return NOT_SIGNIFICANT, "the 95% interval contains 0 and reaches into the claimed range"
    sides = [f"below +{lo}%"] * (ci.lo < lo) + [f"above +{hi}%"] * (ci.hi > hi)
    return (
        NOT_SIGNIFICANT,
        f"the 95% interval meets the claimed range but reaches {' and '.join(sides)}",
    )


@dataclass(frozen=True)
class FleetCost:
    """One replicate's fleet CPU-seconds (and bytes) to produce and install the update."""

    delta_cpu_s: float  # cluster training (once) + every node's sync work
    live_cpu_s: float  # every node's local training
    delta_bytes: float
    live_bytes: float
    nodes: int


def cost_verdict(costs: Sequence[FleetCost], claimed_ratio: float = CLAIM_COST_RATIO) -> Verdict:
    text = f"update cost {claimed_ratio:g}x lower than delta update (fleet CPU)"
    if not costs:
        return Verdict("update_cost", text, NOT_MEASURED, None, None, "no run")
    ratios = [c.delta_cpu_s / c.live_cpu_s if c.live_cpu_s > 0 else None for c in costs]
    ci = t_interval(ratios)
    if ci is None:
        return Verdict("update_cost", text, NOT_MEASURED, None, None, "LiveUpdate spent no CPU")
    c0 = costs[0]
    measured = (
        f"fleet CPU-s delta_sync / liveupdate = {ci.mean:.2f}x (95% CI {ci.lo:.2f}..{ci.hi:.2f}, "
        f"n={ci.n}) on {c0.nodes} node(s); first run: {c0.delta_cpu_s:.1f} vs {c0.live_cpu_s:.1f} "
        f"CPU-s, bytes {c0.delta_bytes:.3g} vs {c0.live_bytes:.3g}"
    )
    if ci.lo >= claimed_ratio:
        return Verdict("update_cost", text, HELD, True, measured, "", ci.as_dict())
    if ci.hi < claimed_ratio:
        why = (
            f"LiveUpdate's fleet spends more than 1/{claimed_ratio:g} of delta_sync's CPU "
            "(the cluster trains once for the whole fleet; every node trains for itself)"
        )
        return Verdict("update_cost", text, NOT_HELD, False, measured, why, ci.as_dict())
    why = f"the 95% interval of the ratio contains {claimed_ratio:g}"
    return Verdict("update_cost", text, NOT_SIGNIFICANT, False, measured, why, ci.as_dict())


@dataclass(frozen=True)
class MemoryAccount:
    """One node's update memory: measured tensors against the tables, beside the budget's view."""

    measured_peak_bytes: int  # distinct tensor storages the node held for updating (peak)
    formula_peak_bytes: int  # what the strategy's own accounting (its budget) says
    table_bytes: int
    process_peak_rss: int | None  # the whole experiment process (/proc VmHWM), for context


def memory_verdict(
    accounts: Sequence[MemoryAccount], claimed_pct: float = CLAIM_MEMORY_PCT
) -> Verdict:
    text = f"memory < {claimed_pct:g}% of the tables"
    if not accounts:
        return Verdict("memory", text, NOT_MEASURED, None, None, "liveupdate was not run")
    worst = max(accounts, key=lambda a: a.measured_peak_bytes / a.table_bytes)
    pct = 100.0 * worst.measured_peak_bytes / worst.table_bytes
    budget_pct = 100.0 * worst.formula_peak_bytes / worst.table_bytes
    rss = "" if worst.process_peak_rss is None else (
        f"; the whole experiment process peaked at {worst.process_peak_rss / 2**20:.0f} MiB RSS"
    )  # fmt: skip
    measured = (
        f"peak bytes of the tensors a LiveUpdate node holds for updating: "
        f"{worst.measured_peak_bytes / 2**20:.3f} MiB = {pct:.3f}% of its tables "
        f"({worst.table_bytes / 2**20:.2f} MiB); its budget accounting said {budget_pct:.3f}%{rss}"
    )
    if pct < claimed_pct:
        return Verdict("memory", text, HELD, True, measured, "")
    why = f"measured {pct:.3f}% >= {claimed_pct:g}%"
    if budget_pct < claimed_pct:
        why += (
            " although the budget's own formula stays under it: buffers the formula does not "
            "count (pending labelled batches, spare capacity, published versions)"
        )
    return Verdict("memory", text, NOT_HELD, False, measured, why)
