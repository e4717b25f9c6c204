"""Builders of valid wire payloads shared by unit and integration tests."""

from __future__ import annotations

import time


def telemetry_sample(seq: int, ts: float | None = None, **overrides) -> dict:
    """One protocol-valid telemetry sample (nodeworker.protocol.validate_sample accepts it)."""
    data = {
        "seq": seq,
        "ts": ts if ts is not None else time.time(),
        "qps": 120.0,
        "p50_ms": 2.0,
        "p95_ms": 5.0,
        "p99_ms": 9.0,
        "auc": 0.71,
        "logloss": 0.52,
        "memory_overhead_bytes": 4096,
        "memory_overhead_pct": 1.4,
        "freshness_lag_s": 0.8,
        "trainer_samples_per_s": 900.0,
        "trainer_duty": 0.6,
        "throttle": "running",
        "tables": {"user": {"rank": 4, "memory_bytes": 2048, "memory_pct": 1.2}},
        "cpu_per_core": [55.0, 20.0],
        "events": [],
    }
    data.update(overrides)
    return data
