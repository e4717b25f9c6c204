"""A fleet against one control plane: N simulated nodes each post one telemetry sample a second
(open loop, spread over the second) while V dashboard websockets watch the whole fleet. A real
server (``liveupdate serve --workers W``, as tests/services.py starts it) on a fresh PostgreSQL
database and the Redis channel layer; the load generator runs on the same machine.

Reports ingest latency per request (counted from each post's scheduled time, so queueing
shows), whether every sample was stored exactly once, and per viewer how many telemetry events
arrived, how late (receipt - the sample's scheduled time), and how many the server announced
as dropped ("resync" messages).

    python bench/fleet_bench.py [--nodes 50] [--viewers 0,50] [--duration 30] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import multiprocessing.connection
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import requests
from cp_harness import ROOT, Node, ServerCPU, api_token, bench_services, services, summary_ms
from websockets.sync.client import connect


def run_node(node: Node, url: str, t0: float, duration: float, out: dict) -> None:
    """One post a second from ``t0``; latency from the scheduled time, and how late the post
    started (the load generator's own lag, e.g. when the machine is busy)."""
    latencies, lags, errors, k = [], [], 0, 0
    while True:
        due = t0 + k
        if due > t0 + duration:
            break
        time.sleep(max(0.0, due - time.monotonic()))
        lags.append(time.monotonic() - due)
        try:
            node.post(url, 1)
            latencies.append(time.monotonic() - due)
        except requests.RequestException:
            errors += 1
        k += 1
    out[node.name] = (latencies, lags, errors)


class Viewer:
    """A dashboard socket: counts telemetry events and their delay (receipt - scheduled post)."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.count = 0
        self.announced_missing = 0  # the server's resync messages: drops it noticed
        self.connected = threading.Event()

    def run(self, ws_url: str, headers: dict, sent_at: dict, stop: threading.Event) -> None:
        with connect(ws_url, additional_headers=headers, open_timeout=30, max_queue=None) as ws:
            self.connected.set()
            while not stop.is_set():
                try:
                    event = json.loads(ws.recv(timeout=0.5))
                except TimeoutError:
                    continue
                if event.get("kind") == "resync":
                    self.announced_missing += event["missed"]
                if event.get("kind") == "telemetry":
                    self.count += 1
                    due = sent_at.get((event["node"], event["sample"]["seq"]))
                    if due is not None:
                        self.delays.append(time.time() - due)


def watch(n_viewers: int, ws_url: str, headers: dict, control: mp.connection.Connection) -> None:
    """The viewers, in a process of their own: their frames must not compete for one GIL with
    the nodes' posts. Protocol on ``control``: send "connected"; receive the load's wall start
    and the schedule (nodes, seconds); receive "drain"; send the results when no more events
    arrive (late events are late, not lost)."""
    stop = threading.Event()
    viewers = [Viewer() for _ in range(n_viewers)]
    sent_at: dict = {}
    threads = [
        threading.Thread(target=v.run, args=(ws_url, headers, sent_at, stop)) for v in viewers
    ]
    for t in threads:
        t.start()
    services.wait_until(lambda: all(v.connected.is_set() for v in viewers), 60, "viewers")
    control.send("connected")
    wall0, names, seconds = control.recv()
    for i, name in enumerate(names):  # every sample's scheduled wall time, for the delays
        for k in range(seconds + 1):
            sent_at[(name, k)] = wall0 + i / len(names) + k
    control.recv()
    drained, last = time.monotonic() + 60, -1
    while time.monotonic() < drained and sum(v.count for v in viewers) != last:
        last = sum(v.count for v in viewers)
        time.sleep(3)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    control.send([(v.count, v.delays, v.announced_missing) for v in viewers])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--viewers", default="0,50", help="viewer counts, one phase each")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument("--workers", default="1,2", help="server processes, one set of phases each")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "fleet.json")
    args = parser.parse_args(argv)
    if not services.postgres_up() or not services.redis_up():
        print("needs PostgreSQL and Redis (see tests/services.py for the URLs)", file=sys.stderr)
        return 2
    phases = [
        phase(args.nodes, int(n), args.duration, int(w))
        for w in args.workers.split(",")
        for n in args.viewers.split(",")
    ]
    for report in phases:
        print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(phases, indent=2))
    print(f"\nwrote {args.out}")
    return 0


def phase(n_nodes: int, n_viewers: int, duration: float, workers: int) -> dict:
    """One run on a fresh control plane (``workers`` server processes): n_nodes at 1 Hz for
    duration s, n_viewers watching."""
    report: dict = {
        "mode": f"liveupdate serve --workers {workers} + PostgreSQL + Redis channel layer",
        "workers": workers,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load generator beside",
        "nodes": n_nodes,
        "viewers": n_viewers,
        "duration_s": duration,
        "loadavg_before": os.getloadavg(),
    }
    with tempfile.TemporaryDirectory() as tmp, bench_services(Path(tmp)) as env:
        app = services.Appliance(env, Path(tmp) / "server.log", workers=workers).start()
        try:
            nodes = register_nodes(app, n_nodes)
            results, seen, server_cpu = run_load(app, nodes, n_viewers, duration)
            with psycopg.connect(env["DATABASE_URL"]) as conn:
                stored, distinct = conn.execute(
                    "SELECT count(*), count(DISTINCT (node_id, seq)) "
                    "FROM controlplane_telemetrysample"
                ).fetchone()
        finally:
            app.stop()
    report["ingest"] = ingest_report(results, duration, server_cpu) | {
        "stored": stored,
        "stored_distinct": distinct,
    }
    report["delivery"] = delivery_report(report["ingest"]["posted"], seen)
    report["loadavg_after"] = os.getloadavg()
    return report


def register_nodes(app: services.Appliance, n_nodes: int) -> list[Node]:
    admin = {"Authorization": f"Token {api_token(app.env, app.username)}"}
    nodes = []
    for i in range(n_nodes):
        r = requests.post(
            f"{app.url}/api/nodes/", json={"name": f"fleet-{i}"}, headers=admin, timeout=30
        )
        r.raise_for_status()
        nodes.append(Node(f"fleet-{i}", r.json()["token"]))
    return nodes


def run_load(
    app: services.Appliance, nodes: list[Node], n_viewers: int, duration: float
) -> tuple[dict, list, float]:
    """The viewers connect, then every node posts at 1 Hz for ``duration`` s, spread over the
    second. Returns each node's (latencies, lags, errors), each viewer's (events, delays,
    announced missing) and the server's CPU seconds during the load."""
    session = app.login()
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    headers = {"Cookie": cookie, "Origin": app.url}
    ws_url = app.url.replace("http://", "ws://") + "/ws/fleet/"
    control, child_end = mp.Pipe()
    watcher = mp.get_context("spawn").Process(
        target=watch, args=(n_viewers, ws_url, headers, child_end)
    )
    watcher.start()
    assert control.recv() == "connected"
    cpu = ServerCPU(app.process.pid)
    cpu0 = cpu.seconds()
    url = f"{app.url}/api/telemetry/ingest/"
    t0 = time.monotonic() + 1.0
    control.send((time.time() + 1.0, [n.name for n in nodes], int(duration)))
    results: dict = {}
    node_threads = [
        threading.Thread(target=run_node, args=(node, url, t0 + i / len(nodes), duration, results))
        for i, node in enumerate(nodes)
    ]
    for t in node_threads:
        t.start()
    for t in node_threads:
        t.join()
    server_cpu = cpu.seconds() - cpu0
    control.send("drain")
    seen = control.recv()
    watcher.join(timeout=30)
    return results, seen, server_cpu


def ingest_report(results: dict, duration: float, server_cpu: float) -> dict:
    latencies = [x for lat, _, _ in results.values() for x in lat]
    posted = len(latencies)
    return {
        **summary_ms(latencies),
        "posted": posted,
        "errors": sum(e for _, _, e in results.values()),
        "client_start_lag": summary_ms([x for _, lags, _ in results.values() for x in lags]),
        "samples_per_s": round(posted / duration, 1),
        "server_cpu_s": round(server_cpu, 1),
        "server_cpu_ms_per_sample": round(server_cpu * 1000 / max(1, posted), 2),
    }


def delivery_report(posted: int, seen: list) -> dict:
    counts = [count for count, _, _ in seen]
    delays = [d for _, viewer_delays, _ in seen for d in viewer_delays]
    return {
        "expected_events_each": posted,
        "received_min": min(counts, default=0),
        "received_max": max(counts, default=0),
        "lost_total": sum(posted - c for c in counts),
        "announced_missing_total": sum(missing for _, _, missing in seen),
        "delay": summary_ms(delays) if delays else None,
    }


def print_table(report: dict) -> None:
    i, v = report["ingest"], report["delivery"]
    loads = "/".join(f"{x:.1f}" for x in report["loadavg_before"])
    print(f"\n{report['mode']} on {report['machine']}; load average before {loads}")
    print(f"{report['nodes']} nodes at 1 Hz, {report['viewers']} viewers, {report['duration_s']} s")
    print(f"  {'':<22} {'n':>6} {'p50':>9} {'p95':>9} {'p99':>9} {'max':>9}")
    d = v["delay"] or {"n": 0, "p50_ms": 0, "p95_ms": 0, "p99_ms": 0, "max_ms": 0}
    rows = (
        ("ingest (goal p99<100ms)", i),
        ("  of it: client lag", i["client_start_lag"]),
        ("ingest -> each viewer", d),
    )
    for name, s in rows:
        print(
            f"  {name:<22} {s['n']:>6} {s['p50_ms']:>7.1f}ms {s['p95_ms']:>7.1f}ms"
            f" {s['p99_ms']:>7.1f}ms {s['max_ms']:>7.1f}ms"
        )
    print(
        f"  posted {i['posted']} ({i['samples_per_s']}/s), errors {i['errors']}, stored"
        f" {i['stored']} ({i['stored_distinct']} distinct); server CPU"
        f" {i['server_cpu_ms_per_sample']} ms/sample"
    )
    print(
        f"  viewers received {v['received_min']}..{v['received_max']} of"
        f" {v['expected_events_each']} events each; lost in total {v['lost_total']}"
        f" (announced by resync messages: {v['announced_missing_total']})"
    )


if __name__ == "__main__":
    sys.exit(main())
