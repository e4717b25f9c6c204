"""Server CPU per API read, endpoint by endpoint, for one or more checkouts side by side.

One ``liveupdate serve --workers 1`` per checkout, all on one fresh PostgreSQL database holding
the read benchmark's data (a node with an hour of 1 Hz telemetry, a few others with recent
samples, no alerts); requests are sent one at a time, alternating between the servers in
rounds, and each server's user+system CPU (all its processes and threads, from /proc) is read
around every block of requests. CPU time, unlike latency, barely depends on what else the
machine runs, and interleaving spreads what remains over every checkout alike.

    python bench/controlplane_read_cpu.py [--checkout /work/main] [--checkout .] [--requests 100]

Prints the median over rounds of the CPU milliseconds per request, per endpoint and checkout.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.controlplane_bench import seed_history  # noqa: E402
from bench.cp_harness import Node, ServerCPU, api_token  # noqa: E402
from tests import services  # noqa: E402


def endpoints(node: str) -> dict[str, tuple[str, dict]]:
    end = datetime.now(UTC)
    window = {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()}
    return {
        "404 (plain Django)": ("/no-such-page/", {}),
        "health": ("/api/health/", {}),
        "nodes list": ("/api/nodes/", {}),
        "node detail": (f"/api/nodes/{node}/", {}),
        "open alerts": ("/api/alerts/", {"open": "true"}),
        "telemetry 1 h": ("/api/telemetry/", {"node": node, "metrics": "p99_ms,auc", **window}),
        # what a chart 600 pixels wide needs (max_points; a checkout without it sends 1,801)
        "telemetry 1 h, 600": (
            "/api/telemetry/",
            {"node": node, "metrics": "p99_ms,auc", "max_points": "600", **window},
        ),
    }


class Server:
    """``liveupdate serve`` of one checkout (its own code on PYTHONPATH), one worker."""

    def __init__(self, checkout: Path, env: dict[str, str], log: Path):
        self.checkout = checkout
        self.port = services.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = env | {"PYTHONPATH": str(checkout)}
        cmd = [sys.executable, "-m", "controlplane.cli", "serve", "--port", str(self.port)]
        cmd += ["--workers", "1"]
        self.process = subprocess.Popen(
            cmd, env=env, cwd=checkout, stdout=log.open("a"), stderr=subprocess.STDOUT
        )
        services.wait_until(self._healthy, 60, f"{checkout}'s server (log: {log})", 0.2)
        self.cpu = ServerCPU(self.process.pid)
        self.http = requests.Session()

    def _healthy(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"the server of {self.checkout} exited early")
        try:
            return requests.get(f"{self.url}/api/health/", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def cpu_ms_per_request(self, path: str, params: dict, token: str, n: int) -> float:
        headers = {"Authorization": f"Token {token}"}
        for _ in range(3):  # warm: connection, caches, the pool
            self.http.get(self.url + path, params=params, headers=headers, timeout=30)
        before = self.cpu.seconds()
        for _ in range(n):
            self.http.get(self.url + path, params=params, headers=headers, timeout=30)
        return (self.cpu.seconds() - before) * 1000 / n

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--checkout",
        type=Path,
        action="append",
        help="a checkout whose server to measure (repeatable; default: this one)",
    )
    parser.add_argument("--requests", type=int, default=100, help="per endpoint, round, server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "read_cpu.json")
    args = parser.parse_args(argv)
    checkouts = [c.resolve() for c in args.checkout or [ROOT]]
    if not services.postgres_up():
        print("needs PostgreSQL (see tests/services.py for the URL)", file=sys.stderr)
        return 2
    loadavg_before = os.getloadavg()
    cpu_ms: dict[str, dict[str, list[float]]] = {}
    with (
        tempfile.TemporaryDirectory() as tmp,
        services.temporary_postgres_database(services.POSTGRES_ADMIN_URL) as db,
    ):
        env = services.appliance_env(Path(tmp), db, services.REDIS_URL)
        app = services.Appliance(env, Path(tmp) / "setup.log")
        app.start()
        try:
            names = ["bench-read", *(f"bench-{i}" for i in range(4))]
            tokens = {
                n: services.manage(env, "create_node", n).strip().splitlines()[-1] for n in names
            }
            ingest = app.url + "/api/telemetry/ingest/"
            seed_history(ingest, Node("bench-read", tokens["bench-read"]), 3600)
            for name in names[1:]:
                Node(name, tokens[name]).post(ingest, 100)
            token = api_token(env, app.username)
        finally:
            app.stop()
        servers = [Server(c, env, Path(tmp) / f"server-{i}.log") for i, c in enumerate(checkouts)]
        try:
            paths = endpoints("bench-read")
            for _ in range(args.rounds):
                for name, (path, params) in paths.items():
                    for server in servers:
                        ms = server.cpu_ms_per_request(path, params, token, args.requests)
                        cpu_ms.setdefault(name, {}).setdefault(str(server.checkout), []).append(ms)
        finally:
            for server in servers:
                server.stop()
    columns = [str(c) for c in checkouts]
    print(f"server CPU ms per request, median of {args.rounds} rounds x {args.requests} requests")
    print(
        f"load average before {'/'.join(f'{x:.1f}' for x in loadavg_before)}, after "
        f"{'/'.join(f'{x:.1f}' for x in os.getloadavg())}"
    )
    print(f"  {'endpoint':<20}" + "".join(f" {c[-24:]:>24}" for c in columns))
    for name, per in cpu_ms.items():
        print(f"  {name:<20}" + "".join(f" {statistics.median(per[c]):>24.2f}" for c in columns))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"loadavg_before": loadavg_before, "cpu_ms": cpu_ms}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
