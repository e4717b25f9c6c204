"""results.json: one run per seed combined into means with 95% intervals, fleet totals, claims.

results.json, schema_version 2 (times in replay-clock seconds, NaN written as null). Every
schema-1 field keeps its name and meaning (now the mean over seeds; costs are fleet totals):
- ``dataset``, ``config``, ``clock``, ``windows`` [{index, start_s, end_s, events, positives}],
  ``fine_windows`` (the same on ``config.fine_window_s``).
- ``strategies``: {name: {mean_auc, auc_per_window, mean_logloss, logloss_per_window,
  pooled_auc, gain_vs_delta_sync_pct_per_window, mean_gain_vs_delta_sync_pct, bytes_moved,
  bytes_moved_projected, bytes_per_hour, cpu_seconds, cpu_seconds_per_hour, serve_cpu_seconds,
  peak_memory_overhead_pct, memory_overhead_pct_per_window, mean_staleness_s,
  staleness_per_window, rank_per_window, active_rows_per_window, syncs_sent, syncs_landed,
  syncs_skipped_link_busy, mean_transfer_s, budgets,
  (new) auc_per_fine_window, gain_vs_delta_sync_pct_per_fine_window, peak_measured_memory_pct,
  measured_memory_pct_per_window, fleet {nodes, bytes_moved, bytes_projected, cpu_seconds,
  node_cpu_seconds, memory_peak_bytes, node_memory_peak_bytes}, per_seed [{seed, mean_auc,
  pooled_auc, mean_gain_vs_delta_sync_pct}], ci95 {mean_auc, pooled_auc,
  mean_gain_vs_delta_sync_pct: {mean, lo, hi, n} | null, auc_per_window,
  gain_vs_delta_sync_pct_per_window, gain_vs_delta_sync_pct_per_fine_window: [.. | null]}}}.
- ``seeds`` [int], ``fleet`` (the FleetConfig), ``cluster`` {cpu_seconds, steps},
  ``liveupdate_budget``, ``lowrank``, ``tuning``, ``label_delay_sweep``,
  ``frontier`` [{sync_period_s, strategies: {name: {mean_auc, bytes_per_hour,
  cpu_seconds_per_hour}}}] (cpu: fleet update CPU + the cluster's training, per hour),
  ``frontier_reading`` [{sync_period_s, delta_sync_auc, liveupdate|liveupdate_dense|hybrid:
  {bytes_ratio, cpu_ratio} | null}] (the cost to reach delta_sync's AUC at that period),
- ``claims`` [{id, claim, verdict, held, measured, why, interval}], ``audit`` (audit.py),
  ``process`` {rss, peak_rss, pss} (/proc of the experiment process), ``runtime``,
  ``summary`` (the "what this run says" paragraph).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_core.experiment import claims as claim_checks
from dlrm_core.experiment.fleet import LocalFleet, fleet_totals
from dlrm_core.experiment.harness import RunResult, pooled_metrics
from dlrm_core.experiment.liveupdate import LiveUpdate
from dlrm_core.experiment.stats import t_interval
from dlrm_core.experiment.summary import summarise

SCHEMA_VERSION = 2
LIVE = "liveupdate"


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


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
        nodes = fleet.nodes if isinstance(s, LocalFleet) else 1
        out[name] = {
            "mean_auc": _mean([_num(w.auc) for w in windows]),
            "auc_per_window": [_num(w.auc) for w in windows],
            "auc_per_fine_window": [_num(w.auc) for w in trace.fine.results()],
            "mean_logloss": _mean([_num(w.log_loss) for w in windows]),
            "logloss_per_window": [_num(w.log_loss) for w in windows],
            "pooled_auc": _num(pooled_metrics(trace)[0]),
            "bytes_moved": fleet.bytes_moved,
            "bytes_moved_projected": fleet.bytes_projected,
            "bytes_per_hour": fleet.bytes_moved / hours,
            "cpu_seconds": fleet.cpu_seconds,
            "cpu_seconds_per_hour": fleet.cpu_seconds / hours,
            "serve_cpu_seconds": trace.serve_cpu_seconds,
            "peak_memory_overhead_pct": 100.0
            * acc.peak_memory_overhead_bytes
            / nodes
            / acc.table_bytes,
            "peak_measured_memory_pct": 100.0 * fleet.node_memory_peak_bytes / acc.table_bytes,
            "memory_overhead_pct_per_window": [p.get("memory_overhead_pct") for p in per],
            "measured_memory_pct_per_window": [p.get("measured_memory_pct") for p in per],
            "mean_staleness_s": trace.staleness_sum / max(trace.staleness_events, 1),
            "staleness_per_window": [
                p["staleness_sum"] / p["events"] if p.get("events") else None for p in per
            ],
            "rank_per_window": [p.get("ranks", {}) for p in per],
            "active_rows_per_window": [p.get("active_rows", {}) for p in per],
            "syncs_sent": acc.syncs_sent,
            "syncs_landed": acc.syncs_landed,
            "syncs_skipped_link_busy": acc.syncs_skipped_link_busy,
            "mean_transfer_s": _mean([_num(t) for t in acc.transfer_seconds]),
            "budgets": dict(node.budgets) if isinstance(node, LiveUpdate) else {},
            "fleet": dataclasses.asdict(fleet),
        }
    ref = out.get("delta_sync")
    for res in out.values():
        for key in ("", "fine_"):
            mine = res[f"auc_per_{key}window"]
            gains = _gains(mine, ref[f"auc_per_{key}window"]) if ref else [None] * len(mine)
            res[f"gain_vs_delta_sync_pct_per_{key}window"] = gains
        res["mean_gain_vs_delta_sync_pct"] = _mean(res["gain_vs_delta_sync_pct_per_window"])
    return out


def _ci(values: list[float | None]) -> dict[str, float | int] | None:
    ci = t_interval(values)
    return None if ci is None else ci.as_dict()


def _elementwise(lists: list[list[Any]]) -> tuple[list[float | None], list[Any]]:
    """(mean, 95% interval) of each position over the seeds' lists (shortest length)."""
    n = min(len(v) for v in lists)
    means = [_mean([v[i] for v in lists]) for i in range(n)]
    return means, [_ci([v[i] for v in lists]) for i in range(n)]


def combine(runs: list[RunResult]) -> dict[str, dict[str, Any]]:
    """The strategies' results over seeds: means (first seed's for non-numbers) and intervals."""
    per_run = [run_strategies(r) for r in runs]
    out: dict[str, dict[str, Any]] = {}
    for name, first in per_run[0].items():
        rows = [p[name] for p in per_run]
        res: dict[str, Any] = dict(first)
        for key, value in first.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                res[key] = _mean([_num(r[key]) for r in rows])
            elif (
                isinstance(value, list)
                and value
                and all(v is None or isinstance(v, float) for v in value)
            ):
                res[key] = _elementwise([r[key] for r in rows])[0]
        ci: dict[str, Any] = {
            key: _ci([r[key] for r in rows])
            for key in ("mean_auc", "pooled_auc", "mean_gain_vs_delta_sync_pct")
        }
        for key in ("auc_per_window", "gain_vs_delta_sync_pct_per_window",
                    "gain_vs_delta_sync_pct_per_fine_window"):  # fmt: skip
            ci[key] = _elementwise([r[key] for r in rows])[1]
        res["ci95"] = ci
        res["per_seed"] = [
            {"seed": run.config.seed, "mean_auc": r["mean_auc"], "pooled_auc": r["pooled_auc"],
             "mean_gain_vs_delta_sync_pct": r["mean_gain_vs_delta_sync_pct"]}
            for run, r in zip(runs, rows, strict=True)
        ]  # fmt: skip
        out[name] = res
    return out


def claim_verdicts(runs: list[RunResult], per_seed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    accuracy, cost, memory = _claim_inputs(runs, per_seed)
    if len(runs) > 1:
        acc_verdict = claim_checks.accuracy_verdict(accuracy, "seeds")
    else:
        gains = per_seed[0].get(LIVE, {}).get("gain_vs_delta_sync_pct_per_window", [])
        acc_verdict = claim_checks.accuracy_verdict(gains, "windows of one seed")
    if LIVE not in runs[0].strategies or "delta_sync" not in runs[0].strategies:
        acc_verdict = dataclasses.replace(
            acc_verdict, verdict=claim_checks.NOT_MEASURED, held=None, measured=None,
            why="liveupdate and delta_sync must both run", interval=None)  # fmt: skip
    return [
        claim_checks.memory_verdict(memory).as_dict(),
        claim_checks.cost_verdict(cost).as_dict(),
        acc_verdict.as_dict(),
    ]


def _claim_inputs(
    runs: list[RunResult], per_seed: list[dict[str, Any]]
) -> tuple[list[float | None], list[claim_checks.FleetCost], list[claim_checks.MemoryAccount]]:
    accuracy, cost, memory = [], [], []
    for run, res in zip(runs, per_seed, strict=True):
        live = run.strategies.get(LIVE)
        if live is None:
            continue
        nodes = live.nodes if isinstance(live, LocalFleet) else [live]
        for node in nodes:
            memory.append(claim_checks.MemoryAccount(
                node.accounting.peak_measured_bytes, node.accounting.peak_memory_overhead_bytes,
                node.accounting.table_bytes, run.process.peak_rss))  # fmt: skip
        if "delta_sync" not in res:
            continue
        accuracy.append(res[LIVE]["mean_gain_vs_delta_sync_pct"])
        delta = res["delta_sync"]["fleet"]
        mine = res[LIVE]["fleet"]
        cost.append(claim_checks.FleetCost(
            delta_cpu_s=run.cluster.cpu_seconds + delta["cpu_seconds"],
            live_cpu_s=mine["cpu_seconds"], delta_bytes=delta["bytes_moved"],
            live_bytes=mine["bytes_moved"], nodes=mine["nodes"]))  # fmt: skip
    return accuracy, cost, memory


def _sweep_row(runs: list[RunResult], key: str) -> dict[str, Any]:
    res = combine(runs)
    hours = max(runs[0].eval_end_s - runs[0].eval_start_s, 1e-9) / 3600.0
    cluster_h = float(np.mean([r.cluster.cpu_seconds for r in runs])) / hours
    return {
        key: getattr(runs[0].config, key),
        "mean_auc": {n: v["mean_auc"] for n, v in res.items()},
        "mean_auc_ci95": {n: v["ci95"]["mean_auc"] for n, v in res.items()},
        "gain_vs_delta_sync_pct": {n: v["mean_gain_vs_delta_sync_pct"] for n, v in res.items()},
        "bytes_per_hour": {n: v["bytes_per_hour"] for n, v in res.items()},
        # what the fleet spends per hour to keep the served model fresh: its own update work,
        # plus the cluster's training for every strategy that the cluster feeds
        "cpu_seconds_per_hour": {
            n: v["cpu_seconds_per_hour"] + (cluster_h if n not in (LIVE, "stale") else 0.0)
            for n, v in res.items()
        },
    }


def frontier_reading(frontier: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each sync period: the cheapest frontier point at which each local learner reaches
    delta_sync's AUC at that period, as bytes/h and CPU/h ratios to delta_sync's (None: it
    never does at any period run)."""
    out = []
    for row in frontier:
        target = row["mean_auc"].get("delta_sync")
        if target is None:
            continue
        entry: dict[str, Any] = {"sync_period_s": row["sync_period_s"], "delta_sync_auc": target}
        for name in ("liveupdate", "liveupdate_dense", "hybrid"):
            if name not in row["mean_auc"]:
                continue
            reach = [r for r in frontier if (r["mean_auc"].get(name) or -1.0) >= target]
            if not reach:
                entry[name] = None
                continue
            bytes_h = min(r["bytes_per_hour"][name] for r in reach)
            cpu_h = min(r["cpu_seconds_per_hour"][name] for r in reach)
            ref_b, ref_c = (
                row["bytes_per_hour"]["delta_sync"],
                row["cpu_seconds_per_hour"]["delta_sync"],
            )
            entry[name] = {
                "bytes_ratio": bytes_h / ref_b if ref_b else None,
                "cpu_ratio": cpu_h / ref_c if ref_c else None,
            }
        out.append(entry)
    return out


def build_results(
    runs: list[RunResult],
    dataset: dict[str, Any],
    delay_sweep: list[list[RunResult]] | None = None,
    tuning: dict[str, Any] | None = None,
    period_sweep: list[list[RunResult]] | None = None,
) -> dict[str, Any]:
    """``runs``: the main configuration, one run per seed; each sweep point likewise."""
    run = runs[0]
    per_seed = [run_strategies(r) for r in runs]
    strategies = combine(runs)
    windows = _windows(next(iter(run.traces.values())).metrics)
    audits = [r.audit for r in runs if r.audit is not None]
    frontier = sorted(
        [_sweep_row(g, "sync_period_s") for g in [runs, *(period_sweep or [])]],
        key=lambda r: r["sync_period_s"],
    )
    results = {
        "schema_version": SCHEMA_VERSION,
        "dataset": _dataset_summary(run, dataset, windows),
        "config": dataclasses.asdict(run.config),
        "seeds": [r.config.seed for r in runs],
        "fleet": dataclasses.asdict(run.config.fleet),
        "clock": run.clock,
        "windows": windows,
        "fine_windows": _windows(next(iter(run.traces.values())).fine),
        "strategies": strategies,
        "cluster": {
            "cpu_seconds": float(np.mean([r.cluster.cpu_seconds for r in runs])),
            "steps": run.cluster.steps,
        },
        "liveupdate_budget": {
            "benefit": run.benefit,
            "budgets": run.budgets,
            "allocation": run.config.live.allocation,
        },  # fmt: skip
        "lowrank": run.lowrank,
        "tuning": tuning,
        "label_delay_sweep": sorted(
            [_sweep_row(g, "label_delay_s") for g in [runs, *(delay_sweep or [])]],
            key=lambda r: r["label_delay_s"],
        ),
        "frontier": frontier,
        "claims": claim_verdicts(runs, per_seed),
        "audit": {
            "enabled": run.config.audit,
            "passed": all(a.passed for a in audits) if audits else None,
            "runs": [a.as_dict() for a in audits],
        },
        "process": run.process.as_dict(),
        "runtime": {"wall_seconds": sum(r.wall_seconds for r in runs)},
    }
    results["frontier_reading"] = frontier_reading(frontier)
    results["summary"] = summarise(results)
    return results


def _dataset_summary(
    run: RunResult, dataset: dict[str, Any], windows: list[dict[str, Any]]
) -> dict[str, Any]:
    """results.json's "dataset": ``dataset`` with the run's event counts, tables and rates."""
    positives = sum(w["positives"] for w in windows)
    return {
        **dataset,
        "events": run.pretrain_events + run.eval_events,
        "pretrain_events": run.pretrain_events,
        "eval_events": run.eval_events,
        "eval_hours": (run.eval_end_s - run.eval_start_s) / 3600.0,
        "features": [{"name": f.name, "rows": f.num_rows} for f in run.schema.sparse],
        "table_bytes": next(iter(run.strategies.values())).accounting.table_bytes,
        "positive_rate": positives / max(run.eval_events, 1),
    }


def write_results(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, allow_nan=False))
