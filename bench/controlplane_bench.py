"""Control-plane benchmarks against a real server (``liveupdate serve`` with 1 and 2 worker
processes, one run each) on PostgreSQL and the Redis channel layer (the production mode), started
the way tests/services.py starts it.

1. Sustained telemetry ingest: N nodes post batches back to back, batch sizes side by side.
2. API reads at a fixed open-loop rate (latency counted from each request's scheduled time, so
   queueing shows), over a mix of list, detail, alerts and bucketed telemetry range queries
   (the last hour of a node that reported once a second for that hour, after the ingest phase
   has filled the table).
3. Ingest-to-websocket delivery: a node posts one sample every 100 ms; a dashboard socket
   watching that node timestamps the telemetry event; idle and under sustained ingest load.

Client and server share this machine's cores. Prints a table and writes JSON.

    python bench/controlplane_bench.py [--duration 15] [--nodes 4] [--batch-sizes 10,100]
                                       [--workers 1,2]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode, urlsplit

from cp_harness import (
    ROOT,
    Node,
    ServerCPU,
    api_token,
    bench_services,
    services,
    summary_ms,
    with_cpu,
)
from websockets.sync.client import connect


def ingest_load(url: str, nodes: list[Node], size: int, stop: threading.Event) -> dict:
    """Each node posts batches back to back until ``stop``; returns accepted samples/s."""
    latencies: list[float] = []
    accepted = [0] * len(nodes)

    def run(i: int) -> None:
        while not stop.is_set():
            elapsed, n = nodes[i].post(url, size)
            latencies.append(elapsed)
            accepted[i] += n

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(nodes))]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    return {
        "batch_size": size,
        "nodes": len(nodes),
        "seconds": round(elapsed, 2),
        "samples": sum(accepted),
        "requests": len(latencies),
        "samples_per_s": round(sum(accepted) / elapsed, 1),
        "request": summary_ms(latencies),
    }


def seed_history(url: str, node: Node, seconds: int) -> None:
    """``seconds`` of one-a-second samples ending now: what a real node has reported."""
    start = time.time() - seconds
    for offset in range(0, seconds, 500):
        node.post(url, min(500, seconds - offset), start + offset)


def bench_ingest(url: str, nodes: list[Node], size: int, duration: float) -> dict:
    stop = threading.Event()
    threading.Timer(duration, stop.set).start()
    return ingest_load(url, nodes, size, stop)


class ReadClient:
    """One keep-alive HTTP/1.1 connection (http.client: the same bytes on the wire as
    ``requests``, a third of its CPU, which the server shares the machine with). A request on a
    kept connection the server closed meanwhile (its keep-alive timeout) is sent again on a new
    one, as urllib3 does."""

    def __init__(self, base_url: str, token: str):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname, parts.port
        self.headers = {"Authorization": f"Token {token}"}
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str) -> int:
        if self.conn is not None:
            try:
                return self._get(path)
            except (http.client.RemoteDisconnected, ConnectionError):
                self.conn.close()
        self.conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        return self._get(path)

    def _get(self, path: str) -> int:
        assert self.conn is not None
        self.conn.request("GET", path, headers=self.headers)
        response = self.conn.getresponse()
        response.read()
        return response.status


def bench_reads(app_url: str, api_token: str, node: str, rate: float, duration: float) -> dict:
    """Open loop at ``rate`` requests/s: request i is due at start + i/rate; its latency runs
    from that due time to the reply, so a slow server cannot hide its queue."""
    end = datetime.now(UTC)
    window = {"start": (end - timedelta(hours=1)).isoformat(), "end": end.isoformat()}
    paths = {
        "nodes list": "/api/nodes/",
        "node detail": f"/api/nodes/{node}/",
        "open alerts": "/api/alerts/?open=true",
        "telemetry 1 h": "/api/telemetry/?"
        + urlencode({"node": node, "metrics": "p99_ms,auc", **window}),
    }
    names = list(paths)
    local = threading.local()
    results: dict[str, list[float]] = {name: [] for name in names}
    late: list[float] = []
    errors: list[str] = []

    def one(i: int, due: float) -> None:
        if not hasattr(local, "client"):
            local.client = ReadClient(app_url, api_token)
        name = names[i % len(names)]
        time.sleep(max(0.0, due - time.perf_counter()))
        late.append(time.perf_counter() - due)
        try:
            status = local.client.get(paths[name])
        except (OSError, http.client.HTTPException) as error:
            errors.append(f"{name}: {error!r}")
            return
        if status != 200:
            errors.append(f"{name}: {status}")
        results[name].append(time.perf_counter() - due)

    total = int(rate * duration)
    cpu_before = time.process_time()
    start = time.perf_counter() + 0.5
    with ThreadPoolExecutor(max_workers=32) as pool:
        for i in range(total):
            due = start + i / rate
            time.sleep(max(0.0, due - time.perf_counter() - 0.05))
            pool.submit(one, i, due)
    finished = time.perf_counter() - start
    overall = [v for values in results.values() for v in values]
    return {
        "rate_per_s": rate,
        "requests": total,
        "achieved_per_s": round(total / finished, 1),
        "errors": errors[:5],
        "error_count": len(errors),
        "overall": summary_ms(overall),
        "per_endpoint": {name: summary_ms(values) for name, values in results.items()},
        # how late the load generator itself started the requests (its threads share the GIL
        # and the machine): part of every latency above, none of it the server's
        "client_lateness": summary_ms(late),
        # the generator's CPU (this process): taken from the cores the server runs on
        "client_cpu_ms_per_request": round(
            (time.process_time() - cpu_before) * 1000 / max(1, total), 3
        ),
    }


def bench_delivery(app: services.Appliance, node: Node, samples: int) -> dict:
    """Seconds from just before the POST to the socket's receipt of that sample's event."""
    session = app.login()
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    ws_url = app.url.replace("http://", "ws://") + "/ws/fleet/"
    sent: dict[int, float] = {}
    delays: list[float] = []
    with connect(ws_url, additional_headers={"Cookie": cookie, "Origin": app.url}) as ws:
        ws.send(json.dumps({"action": "watch_node", "node": node.name}))
        json.loads(ws.recv(timeout=10))
        done = threading.Event()

        def receive() -> None:
            while not done.is_set():
                try:
                    event = json.loads(ws.recv(timeout=1))
                except TimeoutError:
                    continue
                if event.get("kind") == "telemetry" and event["node"] == node.name:
                    seq = event["sample"]["seq"]
                    if seq in sent:
                        delays.append(time.perf_counter() - sent[seq])

        reader = threading.Thread(target=receive)
        reader.start()
        url = app.url + "/api/telemetry/ingest/"
        for _ in range(samples):
            sent[node.seq] = time.perf_counter()
            node.post(url, 1)
            time.sleep(0.1)
        time.sleep(2)
        done.set()
        reader.join()
    result = summary_ms(delays) if delays else {"n": 0}
    result["lost"] = samples - len(delays)
    result["requests"] = samples
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per measurement")
    parser.add_argument("--nodes", type=int, default=4, help="concurrent ingesting nodes")
    parser.add_argument("--batch-sizes", default="10,100", help="comma-separated")
    parser.add_argument("--read-rate", type=float, default=100.0, help="API reads per second")
    parser.add_argument("--delivery-samples", type=int, default=150)
    parser.add_argument(
        "--workers", default="1,2", help="server processes, one run each (comma-separated)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "controlplane.json")
    args = parser.parse_args(argv)
    if not services.postgres_up() or not services.redis_up():
        print("needs PostgreSQL and Redis (see tests/services.py for the URLs)", file=sys.stderr)
        return 2
    reports = [run_variant(args, int(w)) for w in args.workers.split(",")]
    for report in reports:
        print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(reports, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def run_variant(args: argparse.Namespace, workers: int) -> dict:
    """Every measurement on a fresh control plane served by ``workers`` processes."""
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    report: dict = {
        "machine": f"{platform.node()} {platform.machine()}, {os.cpu_count()} cores",
        "mode": f"liveupdate serve --workers {workers} + PostgreSQL + Redis channel layer",
        "workers": workers,
        "args": vars(args) | {"out": str(args.out)},
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp, bench_services(Path(tmp)) as env:
        log = args.out.with_suffix(f".server-{workers}.log")
        log.parent.mkdir(parents=True, exist_ok=True)
        app = services.Appliance(env, log, workers=workers).start()
        try:
            names = [f"bench-{i}" for i in range(args.nodes)] + ["bench-read", "bench-ws"]
            tokens = {n: services.manage(env, "create_node", n).strip() for n in names}
            nodes = [Node(n, tokens[n].splitlines()[-1]) for n in names]
            loaders, read, watched = nodes[:-2], nodes[-2], nodes[-1]
            ingest_url = app.url + "/api/telemetry/ingest/"
            cpu = ServerCPU(app.process.pid)
            report["ingest"] = [
                with_cpu(
                    cpu,
                    lambda s=size: bench_ingest(ingest_url, loaders, s, args.duration),
                    "samples",
                )
                for size in sizes
            ]
            for row in report["ingest"]:
                row["server_cpu_ms_per_request"] = round(
                    row["server_cpu_s"] * 1000 / max(1, row["requests"]), 2
                )
            # the node whose telemetry is read has one hour of 1 Hz history, not the tens of
            # thousands of samples a minute the ingest phase pushed through the loaders
            seed_history(ingest_url, read, 3600)
            token = api_token(env, app.username)
            report["reads"] = with_cpu(
                cpu,
                lambda: bench_reads(app.url, token, read.name, args.read_rate, args.duration),
                "requests",
            )
            report["delivery_idle"] = bench_delivery(app, watched, args.delivery_samples)
            report["delivery_under_load"] = delivery_under_load(
                app, watched, loaders, args.delivery_samples
            )
        finally:
            app.stop()
    report["loadavg_after"] = os.getloadavg()
    return report


def delivery_under_load(
    app: services.Appliance, watched: Node, loaders: list[Node], samples: int
) -> dict:
    """bench_delivery while the loaders post batches of 100 back to back."""
    stop = threading.Event()
    load_result: dict = {}
    url = app.url + "/api/telemetry/ingest/"
    loader = threading.Thread(
        target=lambda: load_result.update(ingest_load(url, loaders, 100, stop))
    )
    loader.start()
    try:
        result = bench_delivery(app, watched, samples)
    finally:
        stop.set()
        loader.join()
    return result | {"background_samples_per_s": load_result.get("samples_per_s")}


def print_table(report: dict) -> None:
    print(f"\n{report['mode']} on {report['machine']}")
    loads = [f"{x:.1f}" for x in (*report["loadavg_before"], *report["loadavg_after"])]
    print(f"load average before {'/'.join(loads[:3])}, after {'/'.join(loads[3:])}\n")
    print("telemetry ingest (goal >= 2000 samples/s)")
    print(
        f"  {'batch':>6} {'nodes':>6} {'samples/s':>10} {'req p50':>9} {'req p99':>9}"
        f" {'srv CPU/req':>12} {'srv CPU/sample':>15}"
    )
    for row in report["ingest"]:
        r = row["request"]
        print(
            f"  {row['batch_size']:>6} {row['nodes']:>6} {row['samples_per_s']:>10.0f}"
            f" {r['p50_ms']:>8.1f}ms {r['p99_ms']:>8.1f}ms"
            f" {row['server_cpu_ms_per_request']:>10.2f}ms"
            f" {row['server_cpu_ms_per_samples']:>13.3f}ms"
        )
    reads = report["reads"]
    print(f"\nAPI reads at {reads['rate_per_s']:.0f} req/s, open loop (goal p99 < 50 ms)")
    print(f"  {'endpoint':<16} {'n':>5} {'p50':>8} {'p95':>8} {'p99':>8}")
    for name, s in [*reads["per_endpoint"].items(), ("ALL", reads["overall"])]:
        print(
            f"  {name:<16} {s['n']:>5} {s['p50_ms']:>6.1f}ms {s['p95_ms']:>6.1f}ms"
            f" {s['p99_ms']:>6.1f}ms"
        )
    late = reads["client_lateness"]
    print(
        f"  errors: {reads['error_count']}, achieved {reads['achieved_per_s']:.0f} req/s,"
        f" server CPU {reads['server_cpu_ms_per_requests']:.2f} ms/request,"
        f" client started requests late by p50 {late['p50_ms']:.1f} / p99 {late['p99_ms']:.1f} ms,"
        f" client CPU {reads['client_cpu_ms_per_request']:.2f} ms/request"
    )
    print("\ningest -> websocket delivery (goal p95 < 250 ms)")
    for key in ("delivery_idle", "delivery_under_load"):
        s = report[key]
        extra = (
            f" (background ingest {s['background_samples_per_s']:.0f} samples/s)"
            if s.get("background_samples_per_s")
            else ""
        )
        print(
            f"  {key:<20} n={s['n']:>4} p50={s.get('p50_ms', 0):.1f}ms"
            f" p95={s.get('p95_ms', 0):.1f}ms p99={s.get('p99_ms', 0):.1f}ms"
            f" lost={s['lost']}{extra}"
        )


if __name__ == "__main__":
    sys.exit(main())
