"""Does LiveUpdate pull ahead in the demo? Runs `liveupdate demo` (the embedded appliance, its
defaults unless given) for a while, then reads both nodes' telemetry from its database.

edge-live (LiveUpdate policy) and edge-baseline (delta-sync, fed by the simulated cluster every
--sync-period) replay the same stream from the same base; each node reports its AUC over the
last 60 s of joined samples about once a second. The table compares the two per span of
`--span` seconds (mean of the samples both nodes sent in it); "won" counts the spans where
LiveUpdate's mean AUC is higher. Writes bench/out/demo_race.json and an offline Plotly chart,
bench/out/demo_race.html; the demo's database and logs stay in bench/out/demo_race/.

    python bench/demo_race.py [--duration 600] [--span 30] [-- demo options, e.g. --drift 20]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workloads import OUT_DIR, print_table, write_json  # noqa: E402

NODES = ("edge-live", "edge-baseline")
REPO = Path(__file__).resolve().parent.parent


def run_demo(data_dir: Path, port: int, duration_s: float, demo_args: list[str]) -> None:
    env = {**os.environ, "LIVEUPDATE_DATA_DIR": str(data_dir)}
    for var in ("DATABASE_URL", "REDIS_URL"):  # the embedded default, whatever the shell has
        env.pop(var, None)
    command = [sys.executable, "-m", "controlplane.cli", "demo", "--port", str(port), *demo_args]
    with open(data_dir / "demo.log", "wb") as log:
        demo = subprocess.Popen(command, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            demo.wait(timeout=duration_s)
            raise SystemExit(f"the demo exited early; see {data_dir / 'demo.log'}")
        except subprocess.TimeoutExpired:
            demo.send_signal(signal.SIGINT)  # what Ctrl-C does: a clean stop
            demo.wait(timeout=60)


def read_auc(data_dir: Path) -> dict[str, list[tuple[float, float]]]:
    """node -> [(seconds since the first sample, AUC)] from the demo's database."""
    os.environ["LIVEUPDATE_DATA_DIR"] = str(data_dir)
    os.environ.pop("DATABASE_URL", None)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    import django

    django.setup()
    from controlplane.models import TelemetrySample

    rows = list(
        TelemetrySample.objects.filter(node__name__in=NODES, auc__isnull=False)
        .order_by("ts")
        .values_list("node__name", "ts", "auc")
    )
    silent = set(NODES) - {name for name, _, _ in rows}
    if silent:
        raise SystemExit(f"no AUC telemetry from {sorted(silent)}; see {data_dir / 'logs'}")
    start = rows[0][1]
    series: dict[str, list[tuple[float, float]]] = {name: [] for name in NODES}
    for name, ts, auc in rows:
        series[name].append(((ts - start).total_seconds(), auc))
    return series


def spans(series: dict[str, list[tuple[float, float]]], span_s: float) -> list[dict]:
    buckets: dict[int, dict[str, list[float]]] = {}
    for name, points in series.items():
        for t, auc in points:
            buckets.setdefault(int(t // span_s), {n: [] for n in NODES})[name].append(auc)
    out = []
    for k in sorted(buckets):
        live, base = buckets[k]["edge-live"], buckets[k]["edge-baseline"]
        if live and base:
            mean_live, mean_base = statistics.fmean(live), statistics.fmean(base)
            out.append(
                {"from_s": k * span_s, "live_auc": mean_live, "baseline_auc": mean_base,
                 "diff": mean_live - mean_base}
            )  # fmt: skip
    return out


def write_chart(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for name in NODES:
        t, auc = zip(*series[name], strict=True) if series[name] else ((), ())
        fig.add_trace(go.Scatter(x=t, y=auc, mode="lines", name=name))
    fig.update_layout(
        title="Demo: AUC over the last 60 s of joined samples, LiveUpdate vs delta-sync",
        xaxis_title="seconds since the first sample",
        yaxis_title="AUC",
    )
    fig.write_html(path, include_plotlyjs=True)
    print(f"wrote {path}")


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of demo")
    parser.add_argument("--span", type=float, default=30.0, help="seconds per table row")
    parser.add_argument("--port", type=int, default=8790)
    parser.add_argument("demo_args", nargs="*", help="passed to `liveupdate demo` (after --)")
    args = parser.parse_args(argv)
    data_dir = OUT_DIR / "demo_race"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    t0 = time.time()
    run_demo(data_dir, args.port, args.duration, args.demo_args)
    series = read_auc(data_dir)
    rows = spans(series, args.span)
    won = sum(r["diff"] > 0 for r in rows)
    mean_diff = statistics.fmean(r["diff"] for r in rows) if rows else float("nan")
    print_table(
        f"demo AUC per {args.span:.0f} s span (demo options: {args.demo_args or 'defaults'})",
        ["from s", "LiveUpdate AUC", "delta-sync AUC", "diff"],
        [[r["from_s"], r["live_auc"], r["baseline_auc"], r["diff"]] for r in rows],
    )
    print(f"LiveUpdate ahead in {won} of {len(rows)} spans; mean difference {mean_diff:+.4f}")
    write_chart(series, OUT_DIR / "demo_race.html")
    payload = {
        "benchmark": "demo_race",
        "args": vars(args),
        "started": t0,
        "spans": rows,
        "spans_won": won,
        "mean_diff": mean_diff,
    }
    write_json("demo_race", payload)
    return payload


if __name__ == "__main__":
    main()
