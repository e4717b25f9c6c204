"""What the control-plane benchmarks (controlplane_bench, fleet_bench, controlplane_read_cpu) share:
a fresh database and channel-layer keys per run, the server's CPU from /proc, a benchmark node
posting telemetry, the superuser's API token and latency summaries. Not a benchmark itself."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import services  # noqa: E402  (the same launcher the integration tests use)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def summary_ms(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p95_ms": round(percentile(ms, 95), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "max_ms": round(max(ms), 2),
        "mean_ms": round(statistics.fmean(ms), 2),
    }


class ServerCPU:
    """CPU seconds the server used (the ``liveupdate serve`` process, its workers and all their
    threads), from /proc: unlike latency this barely depends on what else the machine runs."""

    def __init__(self, pid: int):
        self.pid = pid
        self.tick = os.sysconf("SC_CLK_TCK")

    def pids(self) -> list[int]:
        found, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            found.append(pid)
            for task in Path(f"/proc/{pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    todo += [int(c) for c in (task / "children").read_text().split()]
        return found

    def seconds(self) -> float:
        total = 0
        for pid in self.pids():
            with contextlib.suppress(OSError):  # a worker that exited meanwhile
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime + stime
        return total / self.tick


def with_cpu(cpu: ServerCPU, measure, per: str):
    """Run ``measure()``; add the server's CPU milliseconds per request (and per ``per``)."""
    before = cpu.seconds()
    result = measure()
    used_ms = (cpu.seconds() - before) * 1000
    result["server_cpu_s"] = round(used_ms / 1000, 2)
    result[f"server_cpu_ms_per_{per}"] = round(used_ms / max(1, result[per]), 3)
    return result


class Node:
    """A benchmark node: its token and its next sequence number."""

    def __init__(self, name: str, token: str):
        self.name, self.token, self.seq = name, token, 0
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"Node {token}"

    def batch(self, size: int, first_ts: float | None = None) -> dict:
        """``size`` samples stamped now, or one a second from ``first_ts`` (a node's history)."""
        now = time.time()
        samples = []
        for i in range(size):
            samples.append(
                {
                    "seq": self.seq,
                    "ts": now if first_ts is None else first_ts + i,
                    "qps": 500.0,
                    "p50_ms": 2.1,
                    "p95_ms": 6.3,
                    "p99_ms": 9.8,
                    "auc": 0.74,
                    "logloss": 0.47,
                    "memory_overhead_bytes": 81920,
                    "memory_overhead_pct": 1.6,
                    "freshness_lag_s": 0.7,
                    "trainer_samples_per_s": 1800.0,
                    "trainer_duty": 0.4,
                    "throttle": "running",
                    "tables": {
                        "user": {"rank": 6, "memory_bytes": 61440, "memory_pct": 1.9},
                        "item": {"rank": 4, "memory_bytes": 20480, "memory_pct": 0.9},
                    },
                    "cpu_per_core": [61.0, 34.0],
                    "events": [],
                }
            )
            self.seq += 1
        return {"node": self.name, "samples": samples}

    def post(self, url: str, size: int, first_ts: float | None = None) -> tuple[float, int]:
        body = self.batch(size, first_ts)
        start = time.perf_counter()
        response = self.http.post(url, json=body, timeout=30)
        elapsed = time.perf_counter() - start
        response.raise_for_status()
        return elapsed, response.json()["accepted"]


def api_token(env: dict[str, str], username: str) -> str:
    code = (
        "from rest_framework.authtoken.models import Token; "
        "from django.contrib.auth import get_user_model; "
        f"print(Token.objects.get_or_create(user=get_user_model().objects.get(username={username!r}))[0].key)"
    )
    return services.manage(env, "shell", "-c", code).strip().splitlines()[-1]


@contextlib.contextmanager
def bench_services(tmp: Path) -> Iterator[dict[str, str]]:
    """A fresh PostgreSQL database and channel-layer keys of this run only (prefix with the
    pid in the test Redis database, deleted afterwards), so concurrent runs never collide."""
    prefix = f"bench{os.getpid()}x{uuid.uuid4().hex[:6]}"
    with services.temporary_postgres_database(services.POSTGRES_ADMIN_URL) as db:
        env = services.appliance_env(tmp, db, services.REDIS_URL)
        env["LIVEUPDATE_CHANNEL_PREFIX"] = prefix
        try:
            yield env
        finally:
            client = redis.Redis.from_url(services.REDIS_URL)
            for key in client.scan_iter(f"{prefix}*"):
                client.delete(key)
