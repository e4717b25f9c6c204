"""results.json (the schema below) and a self-contained offline report.html (Plotly inlined).

results.json, schema_version 1 (times in replay-clock seconds, NaN written as null):
- ``dataset``: name, format, path, events, pretrain_events, eval_events, eval_hours,
  features [{name, rows}], table_bytes, positive_rate.
- ``config``: the ExperimentConfig; ``clock``: the event <-> time mapping (qps, events per sync
  period / label delay / window, batch span, link scale).
- ``windows``: [{index, start_s, end_s, events, positives}] of the evaluated part.
- ``strategies``: {stale|full_sync|delta_sync|prioritized_delta|liveupdate: {
  mean_auc (mean over windows), auc_per_window, mean_logloss, logloss_per_window, pooled_auc,
  gain_vs_delta_sync_pct_per_window, mean_gain_vs_delta_sync_pct (relative AUC gain, %),
  bytes_moved, bytes_moved_projected, bytes_per_hour, cpu_seconds, cpu_seconds_per_hour,
  serve_cpu_seconds, peak_memory_overhead_pct, memory_overhead_pct_per_window,
  mean_staleness_s, staleness_per_window, rank_per_window, active_rows_per_window,
  syncs_sent, syncs_landed, syncs_skipped_link_busy, mean_transfer_s, budgets}}.
- ``cluster``: cpu_seconds, steps (the shared training cluster of the sync strategies).
- ``liveupdate_budget``: measured benefit per table and the bytes allocated.
- ``lowrank``: what the low-rank measurement refers to (quantity, optimizer) and its ranks.
- ``tuning``: null, or how the learning rates were chosen on the head (see tuning.py).
- ``label_delay_sweep``: [{label_delay_s, mean_auc: {name: v}, gain_vs_delta_sync_pct: {..}}].
- ``claims``: [{id, claim, held (true/false/null), measured, why}].
- ``audit``: progressive-validation checks; ``runtime``: wall seconds.
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from dlrm_core.experiment.harness import RunResult, pooled_metrics
from dlrm_core.experiment.liveupdate import LiveUpdate

SCHEMA_VERSION = 1
CLAIM_MEMORY_PCT = 2.0
CLAIM_COST_RATIO = 2.0
CLAIM_GAIN_RANGE_PCT = (0.04, 0.24)
# one colour per strategy in every figure
COLORS = {"stale": "#7f7f7f", "full_sync": "#d62728", "delta_sync": "#1f77b4",
          "prioritized_delta": "#2ca02c", "liveupdate": "#ff7f0e"}  # fmt: skip


def _num(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _mean(values: list[float | None]) -> float | None:
    finite = [v for v in values if v is not None]
    return float(np.mean(finite)) if finite else None


def window_table(run: RunResult) -> list[dict[str, Any]]:
    any_trace = next(iter(run.traces.values()))
    out = []
    for k, w in enumerate(any_trace.metrics.results()):
        out.append(
            {"index": k, "start_s": w.start, "end_s": w.end, "events": w.count,
             "positives": w.positives}
        )  # fmt: skip
    return out


def strategy_results(run: RunResult) -> dict[str, dict[str, Any]]:
    hours = max(run.eval_end_s - run.eval_start_s, 1e-9) / 3600.0
    out: dict[str, dict[str, Any]] = {}
    for name, s in run.strategies.items():
        trace, acc = run.traces[name], s.accounting
        windows = trace.metrics.results()
        aucs = [_num(w.auc) for w in windows]
        losses = [_num(w.log_loss) for w in windows]
        origin = run.eval_start_s
        per = [
            trace.per_window.get(int(math.floor((w.start - origin) / run.config.window_s)), {})
            for w in windows
        ]
        pooled_auc, _ = pooled_metrics(trace)
        out[name] = {
            "mean_auc": _mean(aucs),
            "auc_per_window": aucs,
            "mean_logloss": _mean(losses),
            "logloss_per_window": losses,
            "pooled_auc": _num(pooled_auc),
            "bytes_moved": acc.bytes_moved,
            "bytes_moved_projected": acc.bytes_projected,
            "bytes_per_hour": acc.bytes_moved / hours,
            "cpu_seconds": acc.cpu_seconds,
            "cpu_seconds_per_hour": acc.cpu_seconds / hours,
            "serve_cpu_seconds": trace.serve_cpu_seconds,
            "peak_memory_overhead_pct": acc.peak_memory_overhead_pct,
            "memory_overhead_pct_per_window": [p.get("memory_overhead_pct") for p in per],
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
            "budgets": dict(s.budgets) if isinstance(s, LiveUpdate) else {},
        }
    ref = out.get("delta_sync")
    for res in out.values():
        gains: list[float | None] = []
        if ref is not None:
            for a, b in zip(res["auc_per_window"], ref["auc_per_window"], strict=True):
                gains.append(100.0 * (a - b) / b if a is not None and b else None)
        res["gain_vs_delta_sync_pct_per_window"] = gains
        res["mean_gain_vs_delta_sync_pct"] = _mean(gains)
    return out


def claims(run: RunResult, strategies: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    live, delta = strategies.get("liveupdate"), strategies.get("delta_sync")
    out: list[dict[str, Any]] = []
    if live is None:
        why = "liveupdate was not run"
        return [
            {"id": i, "claim": c, "held": None, "measured": None, "why": why}
            for i, c in (("memory", "memory < 2% of the tables"),
                         ("update_cost", "update cost 2x lower than delta update"),
                         ("accuracy", "accuracy +0.04..0.24% within 1-hour windows"))
        ]  # fmt: skip
    pct = live["peak_memory_overhead_pct"]
    held = pct < CLAIM_MEMORY_PCT
    out.append({
        "id": "memory", "claim": "memory < 2% of the tables", "held": held,
        "measured": f"peak LiveUpdate overhead {pct:.3f}% of the embedding tables' bytes",
        "why": "" if held else (
            f"peak overhead {pct:.3f}% >= 2% (budget {run.config.live.budget_pct}% of the "
            "tables; a rebase stages a full table copy)"),
    })  # fmt: skip
    if delta is None:
        out.append(
            {
                "id": "update_cost",
                "claim": "update cost 2x lower than delta update",
                "held": None,
                "measured": None,
                "why": "delta_sync was not run",
            }
        )
        out.append(
            {
                "id": "accuracy",
                "claim": "accuracy +0.04..0.24% within 1-hour windows",
                "held": None,
                "measured": None,
                "why": "delta_sync was not run",
            }
        )
        return out  # fmt: skip
    cluster = run.cluster.cpu_seconds
    delta_cost = delta["cpu_seconds"] + cluster
    live_cost = live["cpu_seconds"]
    ratio = delta_cost / live_cost if live_cost > 0 else math.inf
    held = ratio >= CLAIM_COST_RATIO
    out.append({
        "id": "update_cost", "claim": "update cost 2x lower than delta update", "held": held,
        "measured": (
            f"CPU-s to produce and install the served update: delta_sync {delta_cost:.1f} "
            f"(cluster training {cluster:.1f} + sync {delta['cpu_seconds']:.1f}) vs liveupdate "
            f"{live_cost:.1f} (local training): ratio {ratio:.2f}x; bytes moved "
            f"{delta['bytes_moved']:.3g} vs {live['bytes_moved']:.3g}"),
        "why": "" if held else (
            f"LiveUpdate's local training costs {live_cost:.1f} CPU-s, more than half of "
            f"delta_sync's {delta_cost:.1f} (its factor step, rank control and publishing "
            "are not cheaper than the cluster's step on the same events)"),
    })  # fmt: skip
    gain = live["mean_gain_vs_delta_sync_pct"]
    lo, hi = CLAIM_GAIN_RANGE_PCT
    if run.config.window_s > 3600.0 or gain is None:
        held_gain: bool | None = None
        why = "windows longer than 1 hour" if gain is not None else "no comparable window"
    else:
        held_gain = gain >= lo
        why = (
            ""
            if held_gain
            else (
                f"mean relative AUC gain over delta_sync is {gain:+.3f}% (< +{lo}%) at label "
                f"delay {run.config.label_delay_s:g} s and sync period "
                f"{run.config.sync_period_s:g} s"
            )
        )
        if held_gain and gain > hi:
            why = f"gain {gain:+.3f}% exceeds the claimed range (+{lo}..{hi}%)"
    out.append({
        "id": "accuracy", "claim": "accuracy +0.04..0.24% within 1-hour windows",
        "held": held_gain,
        "measured": (None if gain is None else
                     f"mean relative AUC gain of liveupdate over delta_sync per "
                     f"{run.config.window_s:g}-s window: {gain:+.3f}%"),
        "why": why,
    })  # fmt: skip
    return out


def build_results(
    run: RunResult,
    dataset: dict[str, Any],
    sweep: list[RunResult] | None = None,
    tuning: dict[str, Any] | None = None,
) -> dict[str, Any]:
    strategies = strategy_results(run)
    positives = sum(w["positives"] for w in window_table(run))
    hours = (run.eval_end_s - run.eval_start_s) / 3600.0
    ds = {
        **dataset,
        "events": run.pretrain_events + run.eval_events,
        "pretrain_events": run.pretrain_events,
        "eval_events": run.eval_events,
        "eval_hours": hours,
        "features": [{"name": f.name, "rows": f.num_rows} for f in run.schema.sparse],
        "table_bytes": next(iter(run.strategies.values())).accounting.table_bytes,
        "positive_rate": positives / max(run.eval_events, 1),
    }
    sweep_rows = []
    for r in [run, *(sweep or [])]:
        res = strategy_results(r)
        sweep_rows.append({
            "label_delay_s": r.config.label_delay_s,
            "mean_auc": {n: v["mean_auc"] for n, v in res.items()},
            "gain_vs_delta_sync_pct": {
                n: v["mean_gain_vs_delta_sync_pct"] for n, v in res.items()},
        })  # fmt: skip
    config = dataclasses.asdict(run.config)
    return {
        "schema_version": SCHEMA_VERSION,
        "dataset": ds,
        "config": config,
        "clock": run.clock,
        "windows": window_table(run),
        "strategies": strategies,
        "cluster": {"cpu_seconds": run.cluster.cpu_seconds, "steps": run.cluster.steps},
        "liveupdate_budget": {"benefit": run.benefit, "budgets": run.budgets,
                              "allocation": run.config.live.allocation},
        "lowrank": run.lowrank,
        "tuning": tuning,
        "label_delay_sweep": sorted(sweep_rows, key=lambda r: r["label_delay_s"]),
        "claims": claims(run, strategies),
        "audit": {"enabled": run.config.audit, "checks": run.audit.checks,
                  "violations": run.audit.violations},
        "runtime": {"wall_seconds": run.wall_seconds},
    }  # fmt: skip


def write_results(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=1, allow_nan=False))


def write_report(results: dict[str, Any], path: Path) -> None:
    """A single offline HTML file: plotly.js inlined once, figures and tables."""
    import plotly.graph_objects as go  # plotting is only needed for the report

    names = list(results["strategies"])
    strat = results["strategies"]
    mids = [(w["start_s"] + w["end_s"]) / 7200.0 for w in results["windows"]]
    figs = []

    def fig(title: str, ytitle: str, xtitle: str = "clock time (h)") -> go.Figure:
        f = go.Figure()
        f.update_layout(title=title, xaxis_title=xtitle, yaxis_title=ytitle, height=380)
        figs.append(f)
        return f

    f = fig("AUC per window", "AUC")
    for n in names:
        f.add_scatter(
            x=mids, y=strat[n]["auc_per_window"], mode="lines+markers", name=n,
            line_color=COLORS[n])  # fmt: skip
    f = fig("AUC gain over delta_sync per window", "relative AUC gain (%)")
    for n in names:
        if n != "delta_sync":
            f.add_scatter(
                x=mids, y=strat[n]["gain_vs_delta_sync_pct_per_window"],
                mode="lines+markers", name=n, line_color=COLORS[n])  # fmt: skip
    f = fig("Bytes moved per hour", "bytes / h (experiment scale)", "strategy")
    f.add_bar(x=names, y=[strat[n]["bytes_per_hour"] for n in names],
              marker_color=[COLORS[n] for n in names])  # fmt: skip
    f = fig("Update CPU-seconds per hour", "CPU-s / h", "strategy")
    f.add_bar(x=names, y=[strat[n]["cpu_seconds_per_hour"] for n in names], name="update")
    f.add_bar(
        x=["cluster"],
        y=[results["cluster"]["cpu_seconds"] / max(results["dataset"]["eval_hours"], 1e-9)],
        name="cluster",
    )
    f = fig("Memory overhead per window (peak)", "% of table bytes")
    for n in names:
        f.add_scatter(x=mids, y=strat[n]["memory_overhead_pct_per_window"], name=n,
                      mode="lines+markers", line_color=COLORS[n])  # fmt: skip
    if "liveupdate" in strat:
        f = fig("LiveUpdate rank per table over time", "rank")
        ranks = strat["liveupdate"]["rank_per_window"]
        for table in sorted({t for r in ranks for t in r}):
            f.add_scatter(x=mids, y=[r.get(table) for r in ranks], name=table,
                          mode="lines+markers")  # fmt: skip
    sweep = results["label_delay_sweep"]
    if len(sweep) > 1:
        f = fig("Gain over delta_sync vs label delay", "mean relative AUC gain (%)",
                "label delay (s)")  # fmt: skip
        for n in names:
            if n != "delta_sync":
                f.add_scatter(x=[r["label_delay_s"] for r in sweep],
                              y=[r["gain_vs_delta_sync_pct"].get(n) for r in sweep],
                              name=n, mode="lines+markers", line_color=COLORS[n])  # fmt: skip
    parts = [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    body = "\n".join([
        f"<h1>LiveUpdate freshness experiment: {html.escape(str(results['dataset']['name']))}"
        "</h1>",
        _table("Clock mapping", list(results["clock"].items())),
        _summary_table(results),
        _claims_table(results["claims"]),
        *parts,
    ])  # fmt: skip
    path.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>LiveUpdate experiment</title>"
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse;"
        "margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        ".held{color:#070}.not{color:#a00}</style></head><body>" + body + "</body></html>"
    )


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return html.escape(str(v))


def _table(title: str, rows: list[tuple[str, Any]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    return f"<h2>{html.escape(title)}</h2><table>{cells}</table>"


def _summary_table(results: dict[str, Any]) -> str:
    cols = ["mean_auc", "mean_gain_vs_delta_sync_pct", "mean_logloss", "bytes_per_hour",
            "cpu_seconds_per_hour", "peak_memory_overhead_pct", "mean_staleness_s"]  # fmt: skip
    head = "".join(f"<th>{c}</th>" for c in ["strategy", *cols])
    rows = "".join(
        "<tr>" + f"<th>{html.escape(n)}</th>" + "".join(f"<td>{_fmt(s[c])}</td>" for c in cols)
        + "</tr>"
        for n, s in results["strategies"].items()
    )  # fmt: skip
    return f"<h2>Strategies</h2><table><tr>{head}</tr>{rows}</table>"


def _claims_table(items: list[dict[str, Any]]) -> str:
    rows = []
    for c in items:
        held = c["held"]
        mark = "held" if held else ("not held" if held is False else "not measured")
        css = "held" if held else "not"
        rows.append(
            f"<tr><td>{html.escape(c['claim'])}</td><td class='{css}'>{mark}</td>"
            f"<td>{_fmt(c['measured'] or '')}</td><td>{_fmt(c['why'])}</td></tr>"
        )
    return (
        "<h2>Paper claims on this run</h2><table><tr><th>claim</th><th>verdict</th>"
        "<th>measured</th><th>why not</th></tr>" + "".join(rows) + "</table>"
    )
