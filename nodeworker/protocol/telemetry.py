"""The telemetry wire: a batch of per-second samples, each with a sequence number within the
node's incarnation (``epoch``; ingest is idempotent on (node, epoch, seq)) and the events (rank
change, prune, QoS decision, sync...) of that second, and what the node runs (RunningState).
Every field is bounded (the tables below); ingest, the node (before it spools a sample) and the
tests use them. Stdlib only, like nodeworker.protocol."""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

from nodeworker.protocol import NODE_NAME_RE, Bound, check_number
from nodeworker.protocol.events import (
    EVENT_KINDS,
    MAX_DETAIL_BYTES,
    MAX_DETAIL_DEPTH,
    MAX_EVENTS_PER_SAMPLE,
    NodeEvent,
)

# --- telemetry --------------------------------------------------------------------------------
#
# Every field of a batch has bounds above and below, in the tables below: ingest, the node (before
# it spools a sample) and the tests use these. Integers stay within what a JavaScript number holds
# exactly (the dashboard reads them) and what a PostgreSQL bigint stores; floats are finite and
# bounded, so that sums and means in the database cannot overflow; strings hold no NUL and no
# lone surrogate (PostgreSQL refuses both); nested objects are shallow and small.

THROTTLE_STATES = ("running", "throttled", "paused")
MAX_SAMPLES_PER_BATCH = 1000
# A batch's JSON body: the plane answers 413 above this, the node's batches stay below it.
MAX_BATCH_BYTES = 2 * 1024 * 1024
MAX_WIRE_INT = 2**53 - 1  # seq, epoch, counters: exact in JSON readers that use doubles
MAX_JSON_DEPTH = 32  # any request body, nested objects and lists
MAX_STRING_CHARS = 256  # a string inside a sample (table names, detail values)
MAX_TABLES = 1024
MAX_CPUS = 4096
BYTES_HIGH = float(MAX_WIRE_INT)
PCT_HIGH = 1e4  # memory overheads are % of the base model; far above 100 is still reportable

# name -> (required, its bound: nullable when an absent value is meaningful)
SAMPLE_METRICS: dict[str, tuple[bool, Bound]] = {
    "qps": (True, Bound(float, 0.0, 1e9)),
    "p50_ms": (True, Bound(float, 0.0, 3.6e6, nullable=True)),
    "p95_ms": (True, Bound(float, 0.0, 3.6e6, nullable=True)),
    "p99_ms": (True, Bound(float, 0.0, 3.6e6, nullable=True)),
    "auc": (False, Bound(float, 0.0, 1.0, nullable=True)),
    "logloss": (False, Bound(float, 0.0, 1e4, nullable=True)),
    "memory_overhead_bytes": (True, Bound(float, 0.0, BYTES_HIGH)),
    "memory_overhead_pct": (True, Bound(float, 0.0, PCT_HIGH)),
    "freshness_lag_s": (False, Bound(float, 0.0, 1e8, nullable=True)),
    "trainer_samples_per_s": (True, Bound(float, 0.0, 1e9)),
    "trainer_duty": (True, Bound(float, 0.0, 1.0)),
    "skipped_batches": (False, Bound(float, 0.0, BYTES_HIGH)),
    "dropped_samples": (False, Bound(float, 0.0, BYTES_HIGH)),
}
TABLE_BOUNDS: dict[str, Bound] = {
    "rank": Bound(int, 0, 4096),
    "memory_bytes": Bound(float, 0.0, BYTES_HIGH),
    "memory_pct": Bound(float, 0.0, PCT_HIGH),
}
SEQ_BOUND = Bound(int, 0, MAX_WIRE_INT)
EPOCH_BOUND = Bound(int, 0, MAX_WIRE_INT)
CPU_BOUND = Bound(float, 0.0, 100.0)
SAMPLE_FIELDS = ("seq", "ts", *SAMPLE_METRICS, "throttle", "tables", "cpu_per_core", "events")


@dataclass(frozen=True)
class TimeWindow:
    """The sample and event times a receiver accepts, around its own clock: nothing from the
    future beyond the clock skew (one such sample would pin a node's charts), nothing older than
    the telemetry kept."""

    max_age_s: float = 30 * 86400.0
    max_skew_s: float = 300.0

    def error(self, ts: Any, now: float) -> str | None:
        if _number_error(ts, Bound(float, 0.0, None, low_open=True)):
            return "Must be a finite Unix time in seconds."
        if ts > now + self.max_skew_s:
            return f"Must not be more than {self.max_skew_s:g} s ahead of the receiver's clock."
        if ts < now - self.max_age_s:
            return f"Must not be older than {self.max_age_s:g} s."
        return None


@dataclass(frozen=True)
class RunningState:
    """What a node runs, reported in a batch (``"running"``, optional): the version of the policy
    it applied last (``apply_policy``'s ``version``) and the checksum of its base checkpoint
    (``rebase``'s ``checkpoint.checksum``); None where it runs what it started with. The plane
    re-sends what differs from what it wants the node to run."""

    policy_version: int | None
    checkpoint: str | None


RUNNING_ERROR = (
    'Must be {"policy_version": integer >= 0 or null, "checkpoint": "sha256:<64 hex>" or null}.'
)
CHECKSUM_RE = re.compile(r"^sha256:[0-9a-f]{64}$")


def policy_version_error(value: Any) -> str | None:
    """Why ``value`` is not a policy version (null, or an integer within EPOCH_BOUND)."""
    if value is None:
        return None
    if isinstance(value, float):
        return "Must be a whole number."
    return _number_error(value, EPOCH_BOUND)


def running_state(value: Any) -> RunningState | None:
    """The batch's ``running`` field; raises TelemetryError."""
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) - {"policy_version", "checkpoint"}:
        raise TelemetryError({"running": RUNNING_ERROR})
    version, checkpoint = value.get("policy_version"), value.get("checkpoint")
    bad_version = policy_version_error(version) is not None
    bad_checkpoint = checkpoint is not None and (
        not isinstance(checkpoint, str) or not CHECKSUM_RE.match(checkpoint)
    )
    if bad_version or bad_checkpoint:
        raise TelemetryError({"running": RUNNING_ERROR})
    return RunningState(version, checkpoint)


@dataclass(frozen=True)
class TelemetryBatch:
    """A validated batch: only the known fields of each sample (nothing else is stored or
    broadcast). ``epoch`` is the node's incarnation: a node whose spool starts afresh (new disk,
    restored backup) picks a new one, so its sequence numbers may start again at 0."""

    node: str
    epoch: int
    samples: list[dict[str, Any]]
    running: RunningState | None = None


class TelemetryError(ValueError):
    def __init__(self, errors: dict[str, str]):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


def string_error(value: Any, max_chars: int = MAX_STRING_CHARS) -> str | None:
    if not isinstance(value, str):
        return "Must be a string."
    if len(value) > max_chars:
        return f"At most {max_chars} characters."
    if "\x00" in value:
        return "Must not contain NUL characters."
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "Must be valid Unicode (no lone surrogates)."
    return None


def json_value_error(
    value: Any, max_depth: int = MAX_JSON_DEPTH, numbers: bool = True
) -> str | None:
    """Why a parsed JSON value cannot be stored and re-served as it is (None: it can): nesting
    deeper than ``max_depth``, a string with NUL or a lone surrogate (keys included) and, with
    ``numbers``, a non-finite number or one beyond +-MAX_WIRE_INT."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= max_depth:
                return f"Nested deeper than {max_depth} levels."
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
            if isinstance(item, dict):
                stack.extend((key, depth + 1) for key in item)
        elif isinstance(item, str):
            message = string_error(item, max_chars=1 << 20)
            if message:
                return message
        elif isinstance(item, bool) or item is None or not numbers:
            continue
        elif isinstance(item, float) and not math.isfinite(item):
            return "Numbers must be finite."
        # PostgreSQL's jsonb gives 1e300 back as a 301-digit integer: floats are bounded too
        elif isinstance(item, int | float) and not -MAX_WIRE_INT <= item <= MAX_WIRE_INT:
            return f"Numbers must be within +-{MAX_WIRE_INT}."
    return None


def _number_error(value: Any, bound: Bound) -> str | None:
    """check_number, where an integer field takes no float at all (2.0 included)."""
    if bound.kind is int and isinstance(value, float):
        return "Must be a whole number."
    return check_number(value, bound)


def _table_errors(tables: Any, where: str) -> dict[str, str]:
    if not isinstance(tables, dict):
        return {where: "Must be an object of table name -> {rank, memory_bytes, memory_pct}."}
    if len(tables) > MAX_TABLES:
        return {where: f"At most {MAX_TABLES} tables."}
    errors: dict[str, str] = {}
    for table, info in tables.items():
        path = f"{where}.{table}"
        name_error = string_error(table, 128)
        if name_error:
            errors[where] = f"Table name {table!r}: {name_error}"
            continue
        if not isinstance(info, dict):
            errors[path] = "Must be an object."
            continue
        for name, bound in TABLE_BOUNDS.items():
            message = _number_error(info.get(name), bound)
            if message:
                errors[f"{path}.{name}"] = message
    return errors


def _event_errors(events: Any, where: str, now: float, window: TimeWindow) -> dict[str, str]:
    if not isinstance(events, list):
        return {where: "Must be a list."}
    if len(events) > MAX_EVENTS_PER_SAMPLE:
        return {where: f"At most {MAX_EVENTS_PER_SAMPLE} events per sample."}
    errors: dict[str, str] = {}
    for j, event in enumerate(events):
        path = f"{where}[{j}]"
        if not isinstance(event, dict):
            errors[path] = "Must be an object."
            continue
        if event.get("kind") not in EVENT_KINDS:
            errors[f"{path}.kind"] = f"Must be one of {', '.join(EVENT_KINDS)}."
        ts_error = window.error(event.get("ts"), now)
        if ts_error:
            errors[f"{path}.ts"] = ts_error
        detail = event.get("detail", {})
        message = "Must be an object." if not isinstance(detail, dict) else None
        message = message or json_value_error(detail, MAX_DETAIL_DEPTH)
        if message is None and len(json.dumps(detail)) > MAX_DETAIL_BYTES:
            message = f"At most {MAX_DETAIL_BYTES} bytes encoded."
        if message:
            errors[f"{path}.detail"] = message
    return errors


def validate_sample(
    sample: Any, where: str, now: float | None = None, window: TimeWindow = TimeWindow()
) -> dict[str, str]:
    """Field errors of one telemetry sample, keyed by their path (e.g. ``samples[2].p99_ms``)."""
    if not isinstance(sample, dict):
        return {where: "Must be an object."}
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    if _number_error(sample.get("seq"), SEQ_BOUND) or isinstance(sample.get("seq"), float):
        errors[f"{where}.seq"] = f"Must be an integer >= 0 and <= {MAX_WIRE_INT}."
    ts_error = window.error(sample.get("ts"), now)
    if ts_error:
        errors[f"{where}.ts"] = ts_error
    for name, (required, bound) in SAMPLE_METRICS.items():
        if name not in sample:
            if required:
                errors[f"{where}.{name}"] = "This field is required."
            continue
        message = _number_error(sample[name], bound)
        if message:
            errors[f"{where}.{name}"] = message
    if sample.get("throttle") not in THROTTLE_STATES:
        errors[f"{where}.throttle"] = f"Must be one of {', '.join(THROTTLE_STATES)}."
    errors.update(_table_errors(sample.get("tables", {}), f"{where}.tables"))
    cpu = sample.get("cpu_per_core", [])
    if (
        not isinstance(cpu, list)
        or len(cpu) > MAX_CPUS
        or any(_number_error(c, CPU_BOUND) for c in cpu)
    ):
        errors[f"{where}.cpu_per_core"] = (
            f"Must be a list of at most {MAX_CPUS} percentages between 0 and 100."
        )
    errors.update(_event_errors(sample.get("events", []), f"{where}.events", now, window))
    return errors


def clean_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """The known fields of a valid sample (tables: their known keys), as floats where the
    table says float; unknown fields are dropped, never stored or relayed."""
    clean: dict[str, Any] = {k: sample[k] for k in SAMPLE_FIELDS if k in sample}
    for name in SAMPLE_METRICS:
        if clean.get(name) is not None:
            clean[name] = float(clean[name])
    clean["ts"] = float(clean["ts"])
    clean["tables"] = {
        table: {k: TABLE_BOUNDS[k].kind(info[k]) for k in TABLE_BOUNDS}
        for table, info in clean.get("tables", {}).items()
    }
    clean["cpu_per_core"] = [float(c) for c in clean.get("cpu_per_core", [])]
    clean["events"] = [NodeEvent.from_wire(e).to_wire() for e in clean.get("events", [])]
    return clean


def validate_batch(
    payload: Any, now: float | None = None, window: TimeWindow = TimeWindow()
) -> TelemetryBatch:
    """A telemetry batch ``{"node": name, "epoch": int, "samples": [...], "running": {...}}`` (an
    absent epoch is 0, ``running`` is optional: RunningState); raises TelemetryError with every
    field error at once. A batch is accepted whole or not at all."""
    if not isinstance(payload, dict):
        raise TelemetryError({"non_field_errors": "Must be a JSON object."})
    now = time.time() if now is None else now
    errors: dict[str, str] = {}
    node = payload.get("node")
    if not isinstance(node, str) or not NODE_NAME_RE.match(node):
        errors["node"] = "Must be a node name (lowercase letters, digits and '-')."
    epoch = payload.get("epoch", 0)
    if _number_error(epoch, EPOCH_BOUND) or not isinstance(epoch, int):
        errors["epoch"] = f"Must be an integer >= 0 and <= {MAX_WIRE_INT}."
    samples = payload.get("samples")
    if not isinstance(samples, list) or not samples:
        errors["samples"] = "Must be a non-empty list."
    elif len(samples) > MAX_SAMPLES_PER_BATCH:
        errors["samples"] = f"At most {MAX_SAMPLES_PER_BATCH} samples per batch."
    else:
        for i, sample in enumerate(samples):
            errors.update(validate_sample(sample, f"samples[{i}]", now, window))
        # only well-formed seqs: a list or object there is a field error, not a crash
        seqs = [s["seq"] for s in samples if isinstance(s, dict) and isinstance(s.get("seq"), int)]
        if len(seqs) != len(set(seqs)):
            errors["samples"] = "Sequence numbers must be unique within a batch."
    try:
        running = running_state(payload.get("running"))
    except TelemetryError as exc:
        errors.update(exc.errors)
    if errors or not isinstance(node, str) or not isinstance(samples, list):  # narrows types
        raise TelemetryError(errors)
    return TelemetryBatch(node, epoch, [clean_sample(s) for s in samples], running)
