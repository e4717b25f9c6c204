"""Seeding a live control plane through its REST API for the dashboard's browser tests: an
operator session (session cookie + CSRF token, like the dashboard's own scripts), nodes with
their tokens, telemetry batches and experiment results."""

from __future__ import annotations

import math
import time

import requests

from tests import services


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
    """A small results.json in the experiment's schema (values made up for the page test only)."""

    def strategy(level: float, slope: float, moved: float, cpu: float, memory: float) -> dict:
        per_window = [round(level - slope * i, 4) for i in range(windows)]
        return {
            "mean_auc": round(sum(per_window) / windows, 4),
            "auc_per_window": per_window,
            "mean_logloss": 0.47,
            "bytes_moved": moved,
            "cpu_seconds": cpu,
            "peak_memory_overhead_pct": memory,
            "mean_staleness_s": 30.0,
        }

    return {
        "dataset": {"name": "criteo_kaggle_head10k", "events": 10000},
        "windows": [{"start_s": 600 * i, "end_s": 600 * (i + 1)} for i in range(windows)],
        "strategies": {
            "stale": strategy(0.742, 0.004, 0, 0, 0),
            "full_sync": strategy(0.745, 0.001, 4.1e9, 510.0, 0),
            "delta_sync": strategy(0.744, 0.0015, 6.2e8, 120.0, 0),
            "prioritized_delta": strategy(0.7438, 0.0017, 2.1e8, 90.0, 0),
            "liveupdate": strategy(0.7452, 0.0011, 0, 61.0, 1.7),
        },
        "claims": [
            {
                "claim": "LoRA state < 2% of table memory",
                "paper": "< 2%",
                "measured": "1.7%",
                "holds": True,
            },
            {
                "claim": "update cost 2x lower than delta sync",
                "paper": "2x",
                "measured": "1.97x",
                "holds": False,
            },
        ],
    }
