"""Seeding a live control plane through its REST API for the dashboard's browser tests: an
operator session (session cookie + CSRF token, like the dashboard's own scripts), nodes with
their tokens, telemetry batches and experiment results."""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterator

import requests

from tests import services


@contextlib.contextmanager
def periodically(action: Callable[[], object], period_s: float) -> Iterator[None]:
    """Runs ``action`` every ``period_s`` in a thread while the block runs (a node reporting its
    telemetry), then stops it."""
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(period_s):
            action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


class Seeder:
    def __init__(self, app: services.Appliance):
        self.app = app
        self.http = app.login()
        self.http.headers["X-CSRFToken"] = self.http.cookies["csrftoken"]
        self.http.headers["Referer"] = app.url + "/"
        self.tokens: dict[str, str] = {}
        self.seq: dict[str, int] = {}

    def call(self, method: str, path: str, expect: int, **kwargs) -> dict:
        response = self.http.request(method, self.app.url + path, timeout=15, **kwargs)
        assert response.status_code == expect, (
            f"{method} {path}: {response.status_code} {response.text}"
        )
        return response.json() if response.content else {}

    def policy(self, name: str, **values) -> dict:
        return self.call("POST", "/api/policies/", 201, json={"name": name, **values})

    def node(self, name: str, policy: int | None, topology: dict) -> dict:
        body = {"name": name, "host": f"{name}.local", "policy": policy, "topology": topology}
        created = self.call("POST", "/api/nodes/", 201, json=body)
        self.tokens[name] = created["token"]
        self.seq[name] = 0
        return created

    def ingest(self, node: str, samples: list[dict]) -> dict:
        response = requests.post(
            f"{self.app.url}/api/telemetry/ingest/",
            json={"node": node, "samples": samples},
            headers={"Authorization": f"Node {self.tokens[node]}"},
            timeout=15,
        )
        assert response.status_code == 200, response.text
        return response.json()

    def sample(self, node: str, ts: float, **overrides) -> dict:
        """One second of a node, with a slowly varying AUC and latency (a plausible trace)."""
        seq = self.seq[node]
        self.seq[node] = seq + 1
        wave = math.sin(seq / 9.0)
        data = {
            "seq": seq,
            "ts": ts,
            "qps": 140.0 + 10 * wave,
            "p50_ms": 3.0 + 0.5 * wave,
            "p95_ms": 7.0 + wave,
            "p99_ms": 11.0 + 2 * wave,
            "auc": 0.74 + 0.01 * wave,
            "logloss": 0.48,
            "memory_overhead_bytes": 180_000.0,
            "memory_overhead_pct": 1.1 + 0.2 * wave,
            "freshness_lag_s": 1.5,
            "trainer_samples_per_s": 850.0 + 80 * wave,
            "trainer_duty": 0.7,
            "throttle": "running",
            "tables": {
                "user": {"rank": 6, "memory_bytes": 120_000, "memory_pct": 1.4},
                "item": {"rank": 4, "memory_bytes": 60_000, "memory_pct": 0.8},
            },
            "cpu_per_core": [62.0, 35.0],
            "events": [],
        }
        data.update(overrides)
        return data

    def history(self, node: str, seconds: int, placement: dict | None = None, **overrides) -> None:
        """``seconds`` samples ending now, with a rank change and a QoS throttle on the way (and
        the runtime's start-up "policy" event reporting ``placement``, if given)."""
        now = time.time()
        samples = [self.sample(node, now - seconds + i, **overrides) for i in range(seconds)]
        if placement is not None:
            samples[0]["events"] = [
                {"kind": "policy", "ts": samples[0]["ts"], "detail": {"placement": placement}}
            ]
        samples[seconds // 3]["events"] = [
            {
                "kind": "rank_change",
                "ts": samples[seconds // 3]["ts"],
                "detail": {"table": "user", "from": 4, "to": 6, "reason": "energy"},
            },
        ]
        samples[seconds // 2]["events"] = [
            {
                "kind": "qos",
                "ts": samples[seconds // 2]["ts"],
                "detail": {
                    "action": "decrease",
                    "duty": 0.35,
                    "state": "throttled",
                    "p99_ms": 14.2,
                    "queue_depth": 3,
                    "reason": "p99 near the SLA",
                },
            },
        ]
        samples[seconds // 2]["throttle"] = "throttled"
        self.ingest(node, samples)


def results_json(windows: int = 8) -> dict:
    """A small results.json of schema 2 (nodeworker/protocol/experiment_results.py; values made
    up for the page test only): three seeds on a fleet of 4, claim verdicts, a passed leak audit,
    /proc memory."""

    def ci(mean: float, half: float) -> dict:
        return {"mean": mean, "lo": round(mean - half, 4), "hi": round(mean + half, 4), "n": 3}

    def strategy(level: float, slope: float, moved: float, cpu: float, memory: float) -> dict:
        per_window = [round(level - slope * i, 4) for i in range(windows)]
        mean = round(sum(per_window) / windows, 4)
        gains = [round(100 * (a - b) / b, 4) for a, b in zip(per_window, reference, strict=True)]
        return {
            "mean_auc": mean,
            "auc_per_window": per_window,
            "auc_per_fine_window": [a for a in per_window for _ in range(2)],
            "gain_vs_delta_sync_pct_per_window": gains,
            "mean_gain_vs_delta_sync_pct": round(sum(gains) / windows, 4),
            "mean_logloss": 0.47,
            "bytes_moved": moved,
            "bytes_per_hour": moved / 2,
            "cpu_seconds": cpu,
            "cpu_seconds_per_hour": cpu / 2,
            "peak_memory_overhead_pct": memory,
            "peak_measured_memory_pct": memory * 1.4,
            "mean_staleness_s": 30.0,
            "ci95": {
                "mean_auc": ci(mean, 0.002),
                "mean_gain_vs_delta_sync_pct": ci(round(sum(gains) / windows, 4), 0.05),
                "gain_vs_delta_sync_pct_per_window": [ci(g, 0.1) for g in gains],
            },
            "per_seed": [{"seed": k, "mean_auc": round(mean + 0.001 * (k - 1), 4),
                          "pooled_auc": mean, "mean_gain_vs_delta_sync_pct": None}
                         for k in range(3)],
        }  # fmt: skip

    reference = [round(0.744 - 0.0015 * i, 4) for i in range(windows)]
    return {
        "schema_version": 2,
        "dataset": {"name": "criteo_kaggle_head10k", "events": 10000},
        "windows": [{"start_s": 3600 * i, "end_s": 3600 * (i + 1)} for i in range(windows)],
        "fine_windows": [{"start_s": 1800 * i, "end_s": 1800 * (i + 1)}
                         for i in range(2 * windows)],
        "seeds": [0, 1, 2],
        "fleet": {"nodes": 4, "routing": "sticky-user", "multicast": False},
        "strategies": {
            "stale": strategy(0.742, 0.004, 0, 0, 0),
            "oracle": strategy(0.7455, 0.001, 0, 0, 0),
            "delta_sync": strategy(0.744, 0.0015, 6.2e8, 120.0, 0),
            "liveupdate": strategy(0.7452, 0.0011, 0, 61.0, 1.7),
            "hybrid": strategy(0.7449, 0.0012, 2.1e8, 90.0, 1.9),
        },
        "claims": [
            {"id": "memory", "claim": "memory < 2% of the tables", "verdict": "not held",
             "held": False, "measured": "2.38% of its tables", "why": "measured 2.38% >= 2%",
             "interval": None},
            {"id": "update_cost", "claim": "update cost 2x lower than delta update (fleet CPU)",
             "verdict": "held", "held": True, "measured": "2.3x", "why": "",
             "interval": {"mean": 2.3, "lo": 2.1, "hi": 2.5, "n": 3}},
            {"id": "accuracy", "claim": "accuracy +0.04..0.24% over delta update",
             "verdict": "above the claimed range", "held": False, "measured": "+0.45%",
             "why": "the whole interval is above +0.24%",
             "interval": {"mean": 0.45, "lo": 0.3, "hi": 0.6, "n": 3}},
        ],
        "audit": {"enabled": True, "passed": True, "runs": [
            {"passed": True, "labels_changed": 120, "leaking": [], "strategies": {}}]},
        "process": {"rss": 500 * 2**20, "peak_rss": 516 * 2**20, "pss": 480 * 2**20},
        "summary": "A made-up run for the page test.",
    }  # fmt: skip
