"""The control plane's shortcuts past framework internals against the plain framework path, at
the fleet benchmark's load (N nodes at 1 Hz, V dashboard viewers) and the control-plane
benchmark's API reads (open loop), each variant on a fresh server, variants interleaved round by
round so all of them share the machine's noise.

A variant is a "+"-joined list of shortcuts run the plain way (LIVEUPDATE_PLAIN_FRAMEWORK, see
controlplane.settings), "none" for every shortcut on, "all" for every one off. The token cache
(LIVEUPDATE_TOKEN_CACHE_S, off by default) is taken from the environment for every variant.
Goals: fleet ingest p99 < 100 ms with every event delivered to every viewer; API reads p99 < 50
ms at 100 requests/s.

    python bench/framework_patches.py [--variants none,all] [--rounds 3] [--nodes 50]
        [--viewers 50] [--duration 30] [--workers 2] [--read-rate 100] [--read-duration 15]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from controlplane_bench import bench_reads, seed_history
from cp_harness import ROOT, Node, ServerCPU, api_token, bench_services, services, with_cpu
from fleet_bench import phase

# controlplane.settings.FRAMEWORK_SHORTCUTS (not imported: the settings need a deployment's env)
EVERY_SHORTCUT = ["gc_freeze"]


def variant_env(variant: str) -> dict[str, str]:
    """The environment that turns the shortcuts named by ``variant`` off."""
    names = EVERY_SHORTCUT if variant == "all" else [] if variant == "none" else variant.split("+")
    unknown = set(names) - set(EVERY_SHORTCUT)
    if unknown:
        raise SystemExit(f"unknown shortcut(s) {sorted(unknown)}; known: {EVERY_SHORTCUT}")
    return {"LIVEUPDATE_PLAIN_FRAMEWORK": ",".join(names)}


def read_phase(workers: int, rate: float, duration: float) -> dict:
    """API reads at ``rate``/s on a fresh server, of a node with one hour of 1 Hz history."""
    with tempfile.TemporaryDirectory() as tmp, bench_services(Path(tmp)) as env:
        app = services.Appliance(env, Path(tmp) / "server.log", workers=workers).start()
        try:
            token = services.manage(env, "create_node", "bench-read").strip().splitlines()[-1]
            node = Node("bench-read", token)
            seed_history(app.url + "/api/telemetry/ingest/", node, 3600)
            key = api_token(env, app.username)
            reads = with_cpu(
                ServerCPU(app.process.pid),
                lambda: bench_reads(app.url, key, node.name, rate, duration),
                "requests",
            )
        finally:
            app.stop()
    return reads


def measure(args: argparse.Namespace, variant: str) -> dict:
    saved = os.environ.get("LIVEUPDATE_PLAIN_FRAMEWORK")
    os.environ.update(variant_env(variant))  # services.appliance_env passes it to the server
    try:
        fleet = phase(args.nodes, args.viewers, args.duration, args.workers)
        reads = read_phase(args.workers, args.read_rate, args.read_duration)
    finally:
        if saved is None:
            os.environ.pop("LIVEUPDATE_PLAIN_FRAMEWORK", None)
        else:
            os.environ["LIVEUPDATE_PLAIN_FRAMEWORK"] = saved
    delivery = fleet["delivery"]
    return {
        "variant": variant,
        "loadavg_before": fleet["loadavg_before"],
        "ingest_p99_ms": fleet["ingest"]["p99_ms"],
        "ingest_errors": fleet["ingest"]["errors"],
        "stored_ok": fleet["ingest"]["stored"] == fleet["ingest"]["posted"],
        "events_lost": delivery["lost_total"],
        "server_cpu_ms_per_sample": fleet["ingest"]["server_cpu_ms_per_sample"],
        "read_p99_ms": reads["overall"]["p99_ms"],
        "read_errors": reads["error_count"],
        "read_cpu_ms_per_request": reads["server_cpu_ms_per_requests"],
        "client_lag_p99_ms": fleet["ingest"]["client_start_lag"]["p99_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="none,all", help="comma-separated; + joins names")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--viewers", type=int, default=50)
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--read-rate", type=float, default=100.0)
    parser.add_argument("--read-duration", type=float, default=15.0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "framework.json")
    args = parser.parse_args(argv)
    if not services.postgres_up() or not services.redis_up():
        print("needs PostgreSQL and Redis (see tests/services.py for the URLs)", file=sys.stderr)
        return 2
    variants = args.variants.split(",")
    for variant in variants:
        variant_env(variant)  # an unknown name fails before the first run
    rows = []
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for variant in order:
            row = measure(args, variant) | {"round": r}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print_table(rows, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": rows}))
    print(f"\nwrote {args.out}")
    return 0


def print_table(rows: list[dict], variants: list[str]) -> None:
    print("\nplain path for ... (goals: ingest p99 < 100 ms, none lost, read p99 < 50 ms)")
    print("  each column: the rounds' values in order; CPU: the server's, from /proc")
    columns = {
        "ingest p99 ms": "ingest_p99_ms",
        "CPU ms/sample": "server_cpu_ms_per_sample",
        "lost": "events_lost",
        "read p99 ms": "read_p99_ms",
        "CPU ms/read": "read_cpu_ms_per_request",
        "load": "loadavg_before",
    }
    print(f"  {'variant':<24}" + "".join(f" {title:<20}" for title in columns))
    for variant in variants:
        runs = [row for row in rows if row["variant"] == variant]
        cells = []
        for key in columns.values():
            values = [row[key][0] if key == "loadavg_before" else row[key] for row in runs]
            cells.append(" ".join(f"{v:.3g}" for v in values))
        print(f"  {variant:<24}" + "".join(f" {cell:<20}" for cell in cells))


if __name__ == "__main__":
    sys.exit(main())
