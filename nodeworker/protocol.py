"""The wire between the control plane and the nodes. Imports nothing heavy (stdlib only), so the
control plane may import it without torch.

- Celery: node tasks are sent by name to the queue ``node.<name>``.
- Policies: the fields, their bounds and one validator used by the API, the admin and the node.
- Telemetry: a batch of per-second samples, each with a per-node sequence number (ingest is
  idempotent on (node, seq)) and the events (rank change, prune, QoS decision) of that second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

NODE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")

# Celery task names of the node worker.
TASK_APPLY_POLICY = "nodeworker.apply_policy"
TASK_PAUSE = "nodeworker.pause"
TASK_RESUME = "nodeworker.resume"
TASK_REBASE = "nodeworker.rebase"
TASK_SNAPSHOT = "nodeworker.snapshot"
TASK_APPLY_DELTA = "nodeworker.apply_delta"
NODE_TASKS = (
    TASK_APPLY_POLICY,
    TASK_PAUSE,
    TASK_RESUME,
    TASK_REBASE,
    TASK_SNAPSHOT,
    TASK_APPLY_DELTA,
)

TELEMETRY_PATH = "/api/telemetry/ingest/"
# Header a node authenticates its telemetry with: ``Authorization: Node <token>``.
NODE_AUTH_SCHEME = "Node"

# Operator-facing node actions -> the task each one sends. Keyword arguments, exactly:
#   apply_policy: {"policy": <validate_policy() output>, "policy_name": str, "version": int}
#   pause, resume, snapshot: {}
#   rebase: {"checkpoint": {"name": str, "location": str, "checksum": str}}
# A task returns a JSON object describing what it did; the control plane records it.
NODE_ACTIONS = {
    "apply_policy": TASK_APPLY_POLICY,
    "pause": TASK_PAUSE,
    "resume": TASK_RESUME,
    "rebase": TASK_REBASE,
    "snapshot": TASK_SNAPSHOT,
}


def node_queue(node_name: str) -> str:
    if not NODE_NAME_RE.match(node_name):
        raise ValueError(f"invalid node name {node_name!r}: lowercase letters, digits and '-'")
    return f"node.{node_name}"


# --- policies ---------------------------------------------------------------------------------

MODES = ("liveupdate", "delta_sync", "frozen")
PRUNE_ACTIONS = ("fold", "discard")


@dataclass(frozen=True)
class Bound:
    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: value must be > low instead of >= low
    nullable: bool = False

    def describe(self) -> str:
        low = "" if self.low is None else f"{'>' if self.low_open else '>='} {self.low}"
        high = "" if self.high is None else f"<= {self.high}"
        return " and ".join(p for p in (low, high) if p)


POLICY_BOUNDS: dict[str, Bound] = {
    "r_min": Bound(int, 1, 64),
    "r_max": Bound(int, 1, 64),
    "memory_budget_pct": Bound(float, 0.0, 10.0, low_open=True),
    "tau": Bound(float, 0.5, 1.0),
    "prune_age_s": Bound(float, 1.0, 7 * 86400.0),
    "trainer_cores": Bound(int, 0, 1024),
    "trainer_share": Bound(float, 0.0, 1.0, low_open=True),
    "cache_partition_pct": Bound(int, 0, 100),
    "bandwidth_partition_pct": Bound(int, 0, 100),
    "max_trainer_duty": Bound(float, 0.0, 1.0, low_open=True),
    "sla_p99_ms": Bound(float, 0.0, 60000.0, low_open=True),
    "auc_floor": Bound(float, 0.5, 1.0, nullable=True),
}
POLICY_DEFAULTS: dict[str, Any] = {
    "mode": "liveupdate",
    "r_min": 2,
    "r_max": 16,
    "memory_budget_pct": 2.0,
    "tau": 0.9,
    "prune_age_s": 600.0,
    "prune_action": "fold",
    "trainer_cores": 0,  # 0: let the node pick its idle cores
    "trainer_share": 0.5,
    "cache_partition_pct": 0,  # 0: no CAT partition requested
    "bandwidth_partition_pct": 0,
    "max_trainer_duty": 1.0,
    "sla_p99_ms": 50.0,
    "auc_floor": None,
}


def _check_number(value: Any, bound: Bound) -> str | None:
    if value is None:
        return None if bound.nullable else "This field may not be null."
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"Must be a {'whole ' if bound.kind is int else ''}number."
    if bound.kind is int and not float(value).is_integer():
        return "Must be a whole number."
    if not math.isfinite(value):
        return "Must be a finite number."
    too_low = bound.low is not None and (
        value <= bound.low if bound.low_open else value < bound.low
    )
    too_high = bound.high is not None and value > bound.high
    if too_low or too_high:
        return f"Must be {bound.describe()}."
    return None


def validate_policy(policy: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """(complete policy with defaults, field errors). Errors is empty when the policy is valid."""
    errors: dict[str, str] = {}
    unknown = set(policy) - set(POLICY_DEFAULTS)
    for name in sorted(unknown):
        errors[name] = "Unknown policy field."
    clean = {**POLICY_DEFAULTS, **{k: v for k, v in policy.items() if k in POLICY_DEFAULTS}}
    if clean["mode"] not in MODES:
        errors["mode"] = f"Must be one of {', '.join(MODES)}."
    if clean["prune_action"] not in PRUNE_ACTIONS:
        errors["prune_action"] = f"Must be one of {', '.join(PRUNE_ACTIONS)}."
    for name, bound in POLICY_BOUNDS.items():
        message = _check_number(clean[name], bound)
        if message:
            errors[name] = message
        elif clean[name] is not None:
            clean[name] = bound.kind(clean[name])
    if "r_min" not in errors and "r_max" not in errors and clean["r_min"] > clean["r_max"]:
        errors["r_max"] = "Must be >= r_min."
    return clean, errors


# --- telemetry --------------------------------------------------------------------------------

THROTTLE_STATES = ("running", "throttled", "paused")
EVENT_KINDS = ("rank_change", "prune", "qos", "rebase", "snapshot", "policy")
MAX_SAMPLES_PER_BATCH = 1000

# name -> (required, nullable, lower bound) for the scalar metrics of one telemetry sample.
SAMPLE_METRICS: dict[str, tuple[bool, bool, float | None]] = {
    "qps": (True, False, 0.0),
    "p50_ms": (True, True, 0.0),
    "p95_ms": (True, True, 0.0),
    "p99_ms": (True, True, 0.0),
    "auc": (False, True, 0.0),
    "logloss": (False, True, 0.0),
    "memory_overhead_bytes": (True, False, 0.0),
    "memory_overhead_pct": (True, False, 0.0),
    "freshness_lag_s": (False, True, 0.0),
    "trainer_samples_per_s": (True, False, 0.0),
    "trainer_duty": (True, False, 0.0),
    "skipped_batches": (False, False, 0.0),
    "dropped_samples": (False, False, 0.0),
}


class TelemetryError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_sample(sample: Any, where: str) -> dict[str, str]:
    """Field errors of one telemetry sample, keyed by their path (e.g. ``samples[2].p99_ms``)."""
    if not isinstance(sample, dict):
        return {where: "Must be an object."}
    errors: dict[str, str] = {}
    seq = sample.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        errors[f"{where}.seq"] = "Must be an integer >= 0."
    if not _finite(sample.get("ts")) or sample["ts"] <= 0:
        errors[f"{where}.ts"] = "Must be a finite Unix time in seconds."
    for name, (required, nullable, low) in SAMPLE_METRICS.items():
        if name not in sample:
            if required:
                errors[f"{where}.{name}"] = "This field is required."
            continue
        value = sample[name]
        if value is None:
            if not nullable:
                errors[f"{where}.{name}"] = "This field may not be null."
        elif not _finite(value):
            errors[f"{where}.{name}"] = "Must be a finite number."
        elif low is not None and value < low:
            errors[f"{where}.{name}"] = f"Must be >= {low}."
    if sample.get("throttle") not in THROTTLE_STATES:
        errors[f"{where}.throttle"] = f"Must be one of {', '.join(THROTTLE_STATES)}."
    tables = sample.get("tables", {})
    if not isinstance(tables, dict):
        errors[f"{where}.tables"] = (
            "Must be an object of table name -> {rank, memory_bytes, memory_pct}."
        )
    else:
        for table, info in tables.items():
            path = f"{where}.tables.{table}"
            if not isinstance(info, dict):
                errors[path] = "Must be an object."
                continue
            rank = info.get("rank")
            if not isinstance(rank, int) or isinstance(rank, bool) or rank < 0:
                errors[f"{path}.rank"] = "Must be an integer >= 0."
            for field in ("memory_bytes", "memory_pct"):
                if not _finite(info.get(field)) or info[field] < 0:
                    errors[f"{path}.{field}"] = "Must be a finite number >= 0."
    cpu = sample.get("cpu_per_core", [])
    if not isinstance(cpu, list) or not all(_finite(c) and 0 <= c <= 100 for c in cpu):
        errors[f"{where}.cpu_per_core"] = "Must be a list of percentages between 0 and 100."
    events = sample.get("events", [])
    if not isinstance(events, list):
        errors[f"{where}.events"] = "Must be a list."
    else:
        for j, event in enumerate(events):
            path = f"{where}.events[{j}]"
            if not isinstance(event, dict):
                errors[path] = "Must be an object."
                continue
            if event.get("kind") not in EVENT_KINDS:
                errors[f"{path}.kind"] = f"Must be one of {', '.join(EVENT_KINDS)}."
            if not _finite(event.get("ts")):
                errors[f"{path}.ts"] = "Must be a finite Unix time in seconds."
            if not isinstance(event.get("detail", {}), dict):
                errors[f"{path}.detail"] = "Must be an object."
    return errors


def validate_batch(payload: Any) -> list[dict[str, Any]]:
    """The samples of a telemetry batch ``{"node": name, "samples": [...]}``; raises TelemetryError
    with every field error at once. A batch is accepted whole or not at all."""
    if not isinstance(payload, dict):
        raise TelemetryError({"non_field_errors": "Must be a JSON object."})
    errors: dict[str, str] = {}
    node = payload.get("node")
    if not isinstance(node, str) or not NODE_NAME_RE.match(node):
        errors["node"] = "Must be a node name (lowercase letters, digits and '-')."
    samples = payload.get("samples")
    if not isinstance(samples, list) or not samples:
        errors["samples"] = "Must be a non-empty list."
    elif len(samples) > MAX_SAMPLES_PER_BATCH:
        errors["samples"] = f"At most {MAX_SAMPLES_PER_BATCH} samples per batch."
    else:
        for i, sample in enumerate(samples):
            errors.update(validate_sample(sample, f"samples[{i}]"))
        # only well-formed seqs: a list or object there is a field error, not a crash
        seqs = [s["seq"] for s in samples if isinstance(s, dict) and isinstance(s.get("seq"), int)]
        if len(seqs) != len(set(seqs)):
            errors["samples"] = "Sequence numbers must be unique within a batch."
    if errors:
        raise TelemetryError(errors)
    return samples
