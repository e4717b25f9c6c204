"""The report's "what this run says" paragraph, written from results.json's numbers only."""

from __future__ import annotations

from typing import Any


def _pct(ci: dict[str, Any] | None) -> str:
    if ci is None:
        return "n/a"
    if ci["n"] < 2:
        return f"{ci['mean']:+.2f}%"
    return f"{ci['mean']:+.2f}% (95% CI {ci['lo']:+.2f}..{ci['hi']:+.2f}%)"


def _reach(point: dict[str, Any]) -> str:
    """One frontier point: its period and its costs relative to delta_sync's."""
    units = (("bytes_ratio", "bytes/h"), ("cpu_ratio", "CPU/h"))
    costs = [f"{point[k]:.2f}x its {unit}" for k, unit in units if point[k] is not None]
    return f"(the {point['sync_period_s'] / 60:g}-min period) needs {' and '.join(costs) or '-'}"


def summarise(results: dict[str, Any]) -> str:
    strat = results["strategies"]
    ds, fleet = results["dataset"], results["fleet"]
    seeds = len(results["seeds"])
    parts = [
        f"{ds['eval_events']:,} events ({ds['eval_hours']:.1f} h of replay clock) were scored "
        f"by {fleet['nodes']} node(s) ({fleet['routing']} routing), over {seeds} seed(s), with "
        f"a {results['config']['label_delay_s']:g}-s label delay and a "
        f"{results['config']['sync_period_s'] / 60:g}-min sync period."
    ]
    best = max(
        (n for n in strat if strat[n]["mean_auc"] is not None),
        key=lambda n: strat[n]["mean_auc"],
        default=None,
    )
    if best is not None:
        parts.append(f"The best mean window AUC is {best}'s, {strat[best]['mean_auc']:.4f}.")
    if "delta_sync" in strat:
        for name in ("oracle", "liveupdate", "liveupdate_dense", "hybrid"):
            if name in strat:
                ci = strat[name]["ci95"]["mean_gain_vs_delta_sync_pct"]
                parts.append(f"{name} vs delta_sync: {_pct(ci)} relative AUC per window.")
        if "oracle" in strat:
            parts.append(
                "The oracle is the freshness ceiling of any cluster-fed strategy: a local "
                "learner above it gains from its own optimisation, not from freshness."
            )
        live, delta = strat.get("liveupdate"), strat["delta_sync"]
        if live is not None:
            parts.append(
                f"Fleet update cost per hour: liveupdate {live['cpu_seconds_per_hour']:.0f} "
                f"CPU-s and {live['bytes_per_hour'] / 1e6:.2f} MB, delta_sync "
                f"{delta['cpu_seconds_per_hour']:.0f} CPU-s (+ the cluster's "
                f"{results['cluster']['cpu_seconds'] / max(ds['eval_hours'], 1e-9):.0f} CPU-s "
                f"training) and {delta['bytes_per_hour'] / 1e6:.2f} MB."
            )
    if len(results["frontier"]) > 1:
        for row in results["frontier_reading"]:
            h = row.get("hybrid")
            if not h:
                continue
            text = (
                f"To reach delta_sync's AUC at a {row['sync_period_s'] / 60:g}-min period "
                f"the hybrid's cheapest point in bytes {_reach(h['cheapest_bytes'])}"
            )
            if h["cheapest_cpu"] != h["cheapest_bytes"]:
                text += f"; its cheapest in CPU {_reach(h['cheapest_cpu'])}"
            parts.append(text + ".")
    verdicts = [f"{c['id']}: {c['verdict']}" for c in results["claims"]]
    parts.append("Claims: " + "; ".join(verdicts) + ".")
    audit = results["audit"]
    if audit["enabled"]:
        parts.append(
            "The leak audit " + ("passed." if audit["passed"] else "FAILED: a model used labels "
                                 "before they were due.")
        )  # fmt: skip
    return " ".join(parts)
