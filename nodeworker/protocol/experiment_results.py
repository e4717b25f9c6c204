"""results.json's contract, defined once: the dataclasses below name every field the dashboard
reads, with its type. The control plane checks every import with ``validate_results``
(controlplane.experiments); the tests check the experiment's real files against it.

Pure Python (no torch), in the wire package: the experiment (dlrm_core, pure PyTorch/NumPy, which
imports nothing of nodeworker) writes the file and the control plane, which imports nothing of
dlrm_core, reads it. A field without a default is
required; a field defaulting to None is optional, so schema-1 files (before seeds, fleets and
intervals) stay readable; when present it must have its type. results.py writes more fields
than these (see its docstring); extra keys are kept as they are.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass
from typing import Any

MAX_TEXT = 20_000  # characters of any string field
ACCURACY_VERDICTS = ("within the claimed range", "above the claimed range",
                     "below the claimed range", "not significant")  # fmt: skip
VERDICTS = (*ACCURACY_VERDICTS, "held", "not held", "not measured")


@dataclass(frozen=True)
class Interval:
    """A mean over ``n`` seeds and its 95% interval (dlrm_core.experiment.stats computes it)."""

    mean: float
    lo: float
    hi: float
    n: int


@dataclass(frozen=True)
class Ci95:
    mean_auc: Interval | None = None
    pooled_auc: Interval | None = None
    mean_gain_vs_delta_sync_pct: Interval | None = None
    auc_per_window: list[Interval | None] | None = None
    gain_vs_delta_sync_pct_per_window: list[Interval | None] | None = None
    gain_vs_delta_sync_pct_per_fine_window: list[Interval | None] | None = None


@dataclass(frozen=True)
class SeedResult:
    seed: int
    mean_auc: float | None
    pooled_auc: float | None
    mean_gain_vs_delta_sync_pct: float | None


@dataclass(frozen=True)
class Fleet:
    nodes: int
    bytes_moved: float
    cpu_seconds: float
    node_cpu_seconds: float
    memory_peak_bytes: float
    node_memory_peak_bytes: float
    bytes_projected: float | None = None


@dataclass(frozen=True)
class StrategyResult:
    """strategies.NAME: means over seeds; costs are fleet totals (bytes, CPU-seconds)."""

    mean_auc: float | None
    auc_per_window: list[float | None]
    mean_logloss: float | None
    bytes_moved: float | None
    cpu_seconds: float | None
    peak_memory_overhead_pct: float | None  # the budget's own formula, per node
    mean_staleness_s: float | None
    auc_per_fine_window: list[float | None] | None = None
    gain_vs_delta_sync_pct_per_window: list[float | None] | None = None
    mean_gain_vs_delta_sync_pct: float | None = None
    bytes_per_hour: float | None = None
    cpu_seconds_per_hour: float | None = None
    peak_measured_memory_pct: float | None = None  # the tensors a node holds, measured
    fleet: Fleet | None = None
    ci95: Ci95 | None = None
    per_seed: list[SeedResult] | None = None


@dataclass(frozen=True)
class Claim:
    id: str
    claim: str
    verdict: str  # one of VERDICTS
    held: bool | None
    measured: str | None
    why: str
    interval: Interval | None = None


@dataclass(frozen=True)
class StrategyAudit:
    events: int
    mismatched: int
    max_abs_diff: float


@dataclass(frozen=True)
class AuditRun:
    passed: bool
    labels_changed: int
    leaking: list[str]
    strategies: dict[str, StrategyAudit]


@dataclass(frozen=True)
class Audit:
    enabled: bool
    passed: bool | None  # None: not run
    runs: list[AuditRun]


@dataclass(frozen=True)
class ProcessMemory:
    """/proc/self of the experiment process (bytes): VmRSS, VmHWM, smaps_rollup Pss."""

    rss: int | None
    peak_rss: int | None
    pss: int | None


@dataclass(frozen=True)
class FleetShape:
    nodes: int
    routing: str
    multicast: bool


@dataclass(frozen=True)
class ResultsFile:
    dataset: dict[str, Any]
    windows: list[dict[str, Any]]
    claims: list[Any]  # schema 1: free-form; schema 2: Claim (checked when schema_version >= 2)
    strategies: dict[str, StrategyResult]
    schema_version: int | None = None
    seeds: list[int] | None = None
    fleet: FleetShape | None = None
    audit: Audit | None = None
    process: ProcessMemory | None = None
    summary: str | None = None


def validate_results(results: Any) -> dict[str, str]:
    """Errors keyed by their path in results.json (``strategies.live.mean_auc``); empty if valid."""
    if not isinstance(results, dict):
        return {"": "Must be a JSON object."}
    errors: dict[str, str] = {}
    _check_object(results, ResultsFile, "", errors)
    strategies = results.get("strategies")
    if isinstance(strategies, dict) and not strategies:
        errors["strategies"] = "Must be a non-empty object of strategy name -> results."
    claims = results.get("claims")
    if results.get("schema_version", 1) != 1 and isinstance(claims, list):
        for k, claim in enumerate(claims):
            _check(claim, Claim, f"claims.{k}", errors)
            verdict = claim.get("verdict") if isinstance(claim, dict) else None
            if isinstance(verdict, str) and verdict not in VERDICTS:
                errors[f"claims.{k}.verdict"] = f"Must be one of {', '.join(VERDICTS)}."
    return errors


def _check_object(value: dict[str, Any], cls: type, path: str, errors: dict[str, str]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        where = f"{path}.{f.name}" if path else f.name
        if f.name not in value:
            if f.default is dataclasses.MISSING:
                errors[where] = "This field is required."
            continue
        _check(value[f.name], hints[f.name], where, errors)


def _check(value: Any, kind: Any, path: str, errors: dict[str, str]) -> None:
    args = typing.get_args(kind)
    origin = typing.get_origin(kind)
    nullable = origin in (typing.Union, types.UnionType)  # X | None
    if nullable:
        if value is None:
            return
        kind = next(a for a in args if a is not type(None))
        args, origin = typing.get_args(kind), typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            errors[path] = "Must be an object."
        else:
            _check_object(value, kind, path, errors)  # type: ignore[arg-type]
    elif origin is list:
        if args and args[0] == float | None:
            if not isinstance(value, list) or not all(map(_number_or_null, value)):
                errors[path] = "Must be a list of finite numbers or nulls."
        elif not isinstance(value, list):
            errors[path] = "Must be a list."
        elif args and args[0] is not Any:
            for k, item in enumerate(value):
                _check(item, args[0], f"{path}.{k}", errors)
    elif origin is dict:
        if not isinstance(value, dict):
            errors[path] = "Must be an object."
        elif args and args[1] is not Any:
            for name, item in value.items():
                _check(item, args[1], f"{path}.{name}", errors)
    else:
        _check_scalar(value, kind, path, errors, nullable)


def _check_scalar(value: Any, kind: Any, path: str, errors: dict[str, str], nullable: bool) -> None:
    if kind is float and (value is None or not _number_or_null(value)):
        errors[path] = (
            "Must be a finite number or null." if nullable else "Must be a finite number."
        )
    elif kind is int and (not isinstance(value, int) or isinstance(value, bool)):
        errors[path] = "Must be an integer."
    elif kind is bool and not isinstance(value, bool):
        errors[path] = "Must be true or false."
    elif kind is str and (not isinstance(value, str) or len(value) > MAX_TEXT):
        errors[path] = f"Must be a string of at most {MAX_TEXT} characters."


def _number_or_null(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
