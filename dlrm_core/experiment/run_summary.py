"""One seed's run reduced to plain data: everything results.json needs from a ``RunResult``,
without its models. A worker process sends this back (it pickles small); results.py combines
the summaries of every seed and sweep point.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlrm_core.experiment.audit import LeakAudit
from dlrm_core.experiment.claims import MemoryAccount
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.fleet import FleetTotals, LocalFleet, fleet_totals
from dlrm_core.experiment.fleet_config import FleetConfig
from dlrm_core.experiment.harness import RunResult
from dlrm_core.experiment.liveupdate import LiveUpdate
from dlrm_core.experiment.memory import ProcessMemory
from dlrm_core.experiment.replay import StrategyTrace
from dlrm_core.metrics import auc, log_loss

LIVE = "liveupdate"


@dataclass(frozen=True)
class RunSummary:
    config: ExperimentConfig
    clock: dict[str, Any]
    strategies: dict[str, dict[str, Any]]  # name -> this seed's results (fleet totals)
    windows: list[dict[str, Any]]
    fine_windows: list[dict[str, Any]]
    cluster_cpu_seconds: float
    cluster_steps: int
    benefit: dict[str, float]
    budgets: dict[str, int]
    lowrank: dict[str, Any]
    audit: LeakAudit | None
    process: ProcessMemory
    wall_seconds: float
    eval_start_s: float
    eval_end_s: float
    eval_events: int
    pretrain_events: int
    features: list[dict[str, Any]]  # [{name, rows}]
    table_bytes: int
    live_memory: list[MemoryAccount]  # one per LiveUpdate node (the memory claim)
    # CPU time of the run in its process (all threads); runs replayed together (a bundle)
    # share their replay's evenly, as they share its wall time
    process_cpu_seconds: float = 0.0

    @property
    def eval_hours(self) -> float:
        return max(self.eval_end_s - self.eval_start_s, 1e-9) / 3600.0


def num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def pooled_metrics(trace: StrategyTrace) -> tuple[float, float]:
    """(AUC, log loss) over every scored event."""
    y = np.concatenate(trace.labels)
    s = np.concatenate(trace.scores)
    return auc(y, s), log_loss(y, s)


def _windows(metrics: Any) -> list[dict[str, Any]]:
    return [
        {"index": k, "start_s": w.start, "end_s": w.end, "events": w.count,
         "positives": w.positives}
        for k, w in enumerate(metrics.results())
    ]  # fmt: skip


def _gains(values: list[float | None], ref: list[float | None]) -> list[float | None]:
    return [
        100.0 * (a - b) / b if a is not None and b else None
        for a, b in zip(values, ref, strict=True)
    ]


def summarise_run(run: RunResult) -> RunSummary:
    first = next(iter(run.traces.values()))
    return RunSummary(
        config=run.config, clock=run.clock, strategies=run_strategies(run),
        windows=_windows(first.metrics), fine_windows=_windows(first.fine),
        cluster_cpu_seconds=run.cluster.cpu_seconds, cluster_steps=run.cluster.steps,
        benefit=dict(run.benefit), budgets=dict(run.budgets), lowrank=run.lowrank,
        audit=run.audit, process=run.process, wall_seconds=run.wall_seconds,
        eval_start_s=run.eval_start_s, eval_end_s=run.eval_end_s, eval_events=run.eval_events,
        pretrain_events=run.pretrain_events,
        features=[{"name": f.name, "rows": f.num_rows} for f in run.schema.sparse],
        table_bytes=next(iter(run.strategies.values())).accounting.table_bytes,
        live_memory=_live_memory(run),
    )  # fmt: skip


def _live_memory(run: RunResult) -> list[MemoryAccount]:
    live = run.strategies.get(LIVE)
    if live is None:
        return []
    nodes = live.nodes if isinstance(live, LocalFleet) else [live]
    return [
        MemoryAccount(n.accounting.peak_measured_bytes, n.accounting.peak_memory_overhead_bytes,
                      n.accounting.table_bytes, run.process.peak_rss)
        for n in nodes
    ]  # fmt: skip


def run_strategies(run: RunResult) -> dict[str, dict[str, Any]]:
    """One seed's results per strategy (costs are fleet totals)."""
    hours = max(run.eval_end_s - run.eval_start_s, 1e-9) / 3600.0
    out: dict[str, dict[str, Any]] = {}
    for name, s in run.strategies.items():
        trace, acc = run.traces[name], s.accounting
        fleet = fleet_totals(s, run.config.fleet)
        windows = trace.metrics.results()
        per = [
            trace.per_window.get(
                int(math.floor((w.start - run.eval_start_s) / run.config.window_s)), {}
            )
            for w in windows
        ]
        node = s.nodes[0] if isinstance(s, LocalFleet) else s
        members = s.nodes if isinstance(s, LocalFleet) else [s]
        out[name] = {
            "mean_auc": mean([num(w.auc) for w in windows]),
            "auc_per_window": [num(w.auc) for w in windows],
            "auc_per_fine_window": [num(w.auc) for w in trace.fine.results()],
            "mean_logloss": mean([num(w.log_loss) for w in windows]),
            "logloss_per_window": [num(w.log_loss) for w in windows],
            "pooled_auc": num(pooled_metrics(trace)[0]),
            "bytes_moved": fleet.bytes_moved,
            "bytes_moved_projected": fleet.bytes_projected,
            "bytes_per_hour": fleet.bytes_moved / hours,
            "cpu_seconds": fleet.cpu_seconds,
            "cpu_seconds_per_hour": fleet.cpu_seconds / hours,
            "serve_cpu_seconds": trace.serve_cpu_seconds,
            # the largest node's own peak (a fleet's sum is sampled between calls: it would miss
            # what a node holds while a payload lands)
            "peak_memory_overhead_pct": 100.0
            * max(m.accounting.peak_memory_overhead_bytes for m in members)
            / acc.table_bytes,
            "peak_measured_memory_pct": 100.0 * fleet.node_memory_peak_bytes / acc.table_bytes,
            "memory_overhead_pct_per_window": [p.get("memory_overhead_pct") for p in per],
            "measured_memory_pct_per_window": [p.get("measured_memory_pct") for p in per],
            "mean_staleness_s": trace.staleness_sum / max(trace.staleness_events, 1),
            "staleness_per_window": [
                p["staleness_sum"] / p["events"] if p.get("events") else None for p in per
            ],
            "rank_per_window": [p.get("ranks", {}) for p in per],
            "rank_changes": node.rank_log.summary(
                run.eval_start_s, run.config.window_s, len(windows)
            )
            if isinstance(node, LiveUpdate)
            else {},
            "active_rows_per_window": [p.get("active_rows", {}) for p in per],
            "syncs_sent": acc.syncs_sent,
            "syncs_landed": acc.syncs_landed,
            "syncs_skipped_link_busy": acc.syncs_skipped_link_busy,
            "mean_transfer_s": mean([num(t) for t in acc.transfer_seconds]),
            "budgets": dict(node.budgets) if isinstance(node, LiveUpdate) else {},
            "fleet": dataclasses.asdict(fleet),
        }
    add_gains(out)
    return out


def add_gains(out: dict[str, dict[str, Any]]) -> None:
    """Each strategy's relative AUC gain over delta_sync's, per window and on average."""
    ref = out.get("delta_sync")
    for res in out.values():
        for key in ("", "fine_"):
            mine = res[f"auc_per_{key}window"]
            gains = _gains(mine, ref[f"auc_per_{key}window"]) if ref else [None] * len(mine)
            res[f"gain_vs_delta_sync_pct_per_{key}window"] = gains
        res["mean_gain_vs_delta_sync_pct"] = mean(res["gain_vs_delta_sync_pct_per_window"])


def with_shared(summary: RunSummary, main: RunSummary) -> RunSummary:
    """``summary`` (a sweep point) with the strategies it did not rerun taken from ``main``
    (the same seed's main run: they do not depend on what the sweep varies), and every gain
    over delta_sync recomputed against this point's delta_sync."""
    if summary.config.seed != main.config.seed or summary.windows != main.windows:
        raise ValueError("a sweep point shares strategies only with its own seed's main run")
    merged = {**main.strategies, **summary.strategies}  # main's order
    out = {name: dict(res) for name, res in merged.items()}
    add_gains(out)
    return dataclasses.replace(summary, strategies=out)


def merge_parts(parts: list[RunSummary], config: ExperimentConfig) -> RunSummary:
    """One seed's run of ``config`` from the summaries of its parts (plan.split: the same
    configuration, its strategies replayed in groups): the strategies in ``config``'s order with
    their gains over delta_sync recomputed, the parts' CPU and wall time added, the largest
    process memory, the leak audit over every strategy."""
    first = parts[0]
    if len(parts) == 1 and first.config == config:
        return first
    if any(p.config.seed != config.seed or p.windows != first.windows for p in parts):
        raise ValueError("the parts of a run must share its seed and windows")
    merged = {name: res for p in parts for name, res in p.strategies.items()}
    out = {name: dict(merged[name]) for name in config.strategies}
    add_gains(out)
    audits = [p.audit for p in parts if p.audit is not None]
    audit = None
    if audits:
        checked = {n: a for x in audits for n, a in x.strategies.items()}
        audit = LeakAudit(audits[0].labels_changed, checked)
    return dataclasses.replace(
        first, config=config, strategies=out, audit=audit,
        budgets=next((p.budgets for p in parts if p.budgets), {}),
        live_memory=[m for p in parts for m in p.live_memory],
        process=max(parts, key=lambda p: p.process.peak_rss or 0).process,
        wall_seconds=math.fsum(p.wall_seconds for p in parts),
        process_cpu_seconds=math.fsum(p.process_cpu_seconds for p in parts),
    )  # fmt: skip


def in_fleet(
    res: dict[str, Any], ran: FleetConfig, fleet: FleetConfig, hours: float
) -> dict[str, Any]:
    """A cluster-fed strategy's results from a run in fleet ``ran`` (one simulated node,
    fleet.fleet_totals) as the same replay reports them in ``fleet``: its transfers and its
    node-side CPU and memory scale with the fleet, its scores and the cluster's side do not."""
    ref = FleetTotals(**res["fleet"])
    copies = fleet.transfers_per_sync / ran.transfers_per_sync
    totals = dataclasses.replace(
        ref, nodes=fleet.nodes, bytes_moved=ref.bytes_moved * copies,
        bytes_projected=ref.bytes_projected * copies,
        cpu_seconds=ref.cpu_seconds + (fleet.nodes - ran.nodes) * ref.node_cpu_seconds,
        memory_peak_bytes=fleet.nodes * ref.node_memory_peak_bytes,
    )  # fmt: skip
    return {**res, "fleet": dataclasses.asdict(totals), "bytes_moved": totals.bytes_moved,
            "bytes_moved_projected": totals.bytes_projected,
            "bytes_per_hour": totals.bytes_moved / hours, "cpu_seconds": totals.cpu_seconds,
            "cpu_seconds_per_hour": totals.cpu_seconds / hours}  # fmt: skip
