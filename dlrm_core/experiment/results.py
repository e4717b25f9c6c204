"""results.json: one run per seed combined into means with 95% intervals, fleet totals, claims.

The fields the dashboard reads, with their types, are defined once in
nodeworker/protocol/experiment_results.py (the wire package, which dlrm_core does not import): the
control plane checks each file it imports against them, and the tests check this writer's files.

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
  ``liveupdate_budget``, ``lowrank``, ``tuning`` (tuning.py's log: the grids, each
  candidate's validation AUC, the chosen values), ``label_delay_sweep``,
  ``frontier`` [{sync_period_s, strategies: {name: {mean_auc, bytes_per_hour,
  cpu_seconds_per_hour}}}] (cpu: fleet update CPU + the cluster's training, per hour),
  ``frontier_reading`` [{sync_period_s, delta_sync_auc, liveupdate|liveupdate_dense|hybrid:
  {cheapest_bytes, cheapest_cpu: {sync_period_s, auc, bytes_ratio, cpu_ratio}} | null}] (the
  cost to reach delta_sync's AUC at that period: two whole frontier points, each with its own
  period, AUC and costs; never one point's bytes with another's CPU),
  ``frontier_by_link_scale`` [{link_scale_factor, link_scale, frontier, frontier_reading}]
  (the same per link scale of ``--link-scales``; the first factor's is ``frontier``),
- ``claims`` [{id, claim, verdict, held, measured, why, interval}], ``audit`` (audit.py),
  ``process`` {rss, peak_rss, pss} (/proc of the experiment process), ``runtime``,
  ``summary`` (the "what this run says" paragraph).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_core.experiment import claims as claim_checks
from dlrm_core.experiment.run_summary import LIVE, RunSummary, mean, num
from dlrm_core.experiment.stats import t_interval
from dlrm_core.experiment.summary import summarise

SCHEMA_VERSION = 2


def _ci(values: list[float | None]) -> dict[str, float | int] | None:
    ci = t_interval(values)
    return None if ci is None else ci.as_dict()


def _elementwise(lists: list[list[Any]]) -> tuple[list[float | None], list[Any]]:
    """(mean, 95% interval) of each position over the seeds' lists (shortest length)."""
    n = min(len(v) for v in lists)
    means = [mean([v[i] for v in lists]) for i in range(n)]
    return means, [_ci([v[i] for v in lists]) for i in range(n)]


def combine(runs: list[RunSummary]) -> dict[str, dict[str, Any]]:
    """The strategies' results over seeds: means (first seed's for non-numbers) and intervals."""
    per_run = [r.strategies for r in runs]
    out: dict[str, dict[str, Any]] = {}
    for name, first in per_run[0].items():
        rows = [p[name] for p in per_run]
        res: dict[str, Any] = dict(first)
        for key, value in first.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                res[key] = mean([num(r[key]) for r in rows])
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


def claim_verdicts(runs: list[RunSummary]) -> list[dict[str, Any]]:
    accuracy, cost, memory = _claim_inputs(runs)
    if len(runs) > 1:
        acc_verdict = claim_checks.accuracy_verdict(accuracy, "seeds")
    else:
        gains = runs[0].strategies.get(LIVE, {}).get("gain_vs_delta_sync_pct_per_window", [])
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
    runs: list[RunSummary],
) -> tuple[list[float | None], list[claim_checks.FleetCost], list[claim_checks.MemoryAccount]]:
    accuracy, cost, memory = [], [], []
    for run in runs:
        memory.extend(run.live_memory)
        res = run.strategies
        if LIVE not in res or "delta_sync" not in res:
            continue
        accuracy.append(res[LIVE]["mean_gain_vs_delta_sync_pct"])
        delta = res["delta_sync"]["fleet"]
        mine = res[LIVE]["fleet"]
        cost.append(claim_checks.FleetCost(
            delta_cpu_s=run.cluster_cpu_seconds + delta["cpu_seconds"],
            live_cpu_s=mine["cpu_seconds"], delta_bytes=delta["bytes_moved"],
            live_bytes=mine["bytes_moved"], nodes=mine["nodes"]))  # fmt: skip
    return accuracy, cost, memory


def _sweep_row(runs: list[RunSummary], key: str) -> dict[str, Any]:
    res = combine(runs)
    cluster_h = float(np.mean([r.cluster_cpu_seconds for r in runs])) / runs[0].eval_hours
    value = runs[0].config.link.scale_factor if key == "link_scale_factor" else getattr(
        runs[0].config, key)  # fmt: skip
    return {
        key: value,
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
    """For each sync period: where each local learner reaches delta_sync's AUC at that period,
    as whole frontier points (each point's own AUC, bytes/h and CPU/h, as ratios to
    delta_sync's at the period): the cheapest point in bytes/h (ties: in CPU/h) and the
    cheapest in CPU/h (ties: in bytes/h), often the same point. None: no point reaches it."""
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
            by_bytes = min(reach, key=lambda r: (r["bytes_per_hour"][name],
                                                 r["cpu_seconds_per_hour"][name]))  # fmt: skip
            by_cpu = min(reach, key=lambda r: (r["cpu_seconds_per_hour"][name],
                                               r["bytes_per_hour"][name]))  # fmt: skip
            entry[name] = {"cheapest_bytes": _reach_point(row, by_bytes, name),
                           "cheapest_cpu": _reach_point(row, by_cpu, name)}  # fmt: skip
        out.append(entry)
    return out


def _reach_point(row: dict[str, Any], point: dict[str, Any], name: str) -> dict[str, Any]:
    """One frontier point of ``name``, its costs relative to delta_sync's in ``row``."""
    ref_b, ref_c = row["bytes_per_hour"]["delta_sync"], row["cpu_seconds_per_hour"]["delta_sync"]
    return {
        "sync_period_s": point["sync_period_s"],
        "auc": point["mean_auc"][name],
        "bytes_ratio": point["bytes_per_hour"][name] / ref_b if ref_b else None,
        "cpu_ratio": point["cpu_seconds_per_hour"][name] / ref_c if ref_c else None,
    }


def _frontier(groups: list[list[RunSummary]]) -> list[dict[str, Any]]:
    rows = [_sweep_row(g, "sync_period_s") for g in groups]
    return sorted(rows, key=lambda r: r["sync_period_s"])


def _frontier_by_link_scale(
    run: RunSummary,
    frontier: list[dict[str, Any]],
    link_sweep: dict[float, list[list[RunSummary]]],
) -> list[dict[str, Any]]:
    """The frontier at the main link scale and at each swept one, by scale factor."""
    by_scale = [{"link_scale_factor": run.config.link.scale_factor,
                 "link_scale": run.clock["link_scale"], "frontier": frontier}]  # fmt: skip
    for factor, groups in sorted(link_sweep.items()):
        by_scale.append({"link_scale_factor": factor, "link_scale": groups[0][0].clock[
            "link_scale"], "frontier": _frontier(groups)})  # fmt: skip
    for entry in by_scale:
        entry["frontier_reading"] = frontier_reading(entry["frontier"])
    return sorted(by_scale, key=lambda e: e["link_scale_factor"])


def build_results(
    runs: list[RunSummary],
    dataset: dict[str, Any],
    delay_sweep: list[list[RunSummary]] | None = None,
    tuning: dict[str, Any] | None = None,
    period_sweep: list[list[RunSummary]] | None = None,
    link_sweep: dict[float, list[list[RunSummary]]] | None = None,
) -> dict[str, Any]:
    """``runs``: the main configuration, one summary per seed; each sweep point likewise.
    ``link_sweep``: link scale factor -> its groups (one per sync period), besides the main
    factor's (``runs`` and ``period_sweep``)."""
    run = runs[0]
    audits = [r.audit for r in runs if r.audit is not None]
    frontier = _frontier([runs, *(period_sweep or [])])
    by_scale = _frontier_by_link_scale(run, frontier, link_sweep or {})
    results = {
        "schema_version": SCHEMA_VERSION,
        "dataset": _dataset_summary(run, dataset),
        "config": dataclasses.asdict(run.config),
        "seeds": [r.config.seed for r in runs],
        "fleet": dataclasses.asdict(run.config.fleet),
        "clock": run.clock,
        "windows": run.windows,
        "fine_windows": run.fine_windows,
        "strategies": combine(runs),
        "cluster": {
            "cpu_seconds": float(np.mean([r.cluster_cpu_seconds for r in runs])),
            "steps": run.cluster_steps,
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
        "frontier_reading": frontier_reading(frontier),
        "frontier_by_link_scale": by_scale,
        "claims": claim_verdicts(runs),
        "audit": {
            "enabled": run.config.audit,
            "passed": all(a.passed for a in audits) if audits else None,
            "runs": [a.as_dict() for a in audits],
        },
        "process": run.process.as_dict(),
        "runtime": {
            "wall_seconds": sum(r.wall_seconds for r in runs),
            "cpu_seconds": sum(r.process_cpu_seconds for r in runs),
        },
    }
    results["summary"] = summarise(results)
    return results


def _dataset_summary(run: RunSummary, dataset: dict[str, Any]) -> dict[str, Any]:
    """results.json's "dataset": ``dataset`` with the run's event counts, tables and rates."""
    positives = sum(w["positives"] for w in run.windows)
    return {
        **dataset,
        "events": run.pretrain_events + run.eval_events,
        "pretrain_events": run.pretrain_events,
        "eval_events": run.eval_events,
        "eval_hours": (run.eval_end_s - run.eval_start_s) / 3600.0,
        "features": run.features,
        "table_bytes": run.table_bytes,
        "positive_rate": positives / max(run.eval_events, 1),
    }


def write_results(results: dict[str, Any], path: Path) -> None:
    """results.json (strict JSON: a NaN or infinity left unconverted is an error, not a file)."""
    path.write_text(json.dumps(results, indent=1, allow_nan=False))
