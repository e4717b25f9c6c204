"""The results.json of ``liveupdate experiment``: the keys the control plane relies on.

Schema (extra keys are kept as they are)::

    {"dataset": {...}, "windows": [...], "claims": [...],
     "strategies": {NAME: {"mean_auc", "auc_per_window", "mean_logloss", "bytes_moved",
                           "cpu_seconds", "peak_memory_overhead_pct", "mean_staleness_s"}}}
"""

from __future__ import annotations

import math
from typing import Any

STRATEGY_NUMBERS = (
    "mean_auc",
    "mean_logloss",
    "bytes_moved",
    "cpu_seconds",
    "peak_memory_overhead_pct",
    "mean_staleness_s",
)


def _number_or_null(value: Any) -> bool:
    if value is None:
        return True
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def validate_results(results: Any) -> dict[str, str]:
    """Errors keyed by their path in results.json (``strategies.live.mean_auc``); empty if valid."""
    if not isinstance(results, dict):
        return {"": "Must be a JSON object."}
    errors: dict[str, str] = {}
    for key, kind, name in (
        ("dataset", dict, "an object"),
        ("windows", list, "a list"),
        ("claims", list, "a list"),
    ):
        if key not in results:
            errors[key] = "This field is required."
        elif not isinstance(results[key], kind):
            errors[key] = f"Must be {name}."
    strategies = results.get("strategies")
    if strategies is None:
        errors["strategies"] = "This field is required."
    elif not isinstance(strategies, dict) or not strategies:
        errors["strategies"] = "Must be a non-empty object of strategy name -> results."
    else:
        for name, info in strategies.items():
            path = f"strategies.{name}"
            if not isinstance(info, dict):
                errors[path] = "Must be an object."
                continue
            for key in STRATEGY_NUMBERS:
                if key not in info:
                    errors[f"{path}.{key}"] = "This field is required."
                elif not _number_or_null(info[key]):
                    errors[f"{path}.{key}"] = "Must be a finite number or null."
            per_window = info.get("auc_per_window")
            if per_window is None:
                errors[f"{path}.auc_per_window"] = "This field is required."
            elif not isinstance(per_window, list) or not all(map(_number_or_null, per_window)):
                errors[f"{path}.auc_per_window"] = "Must be a list of finite numbers or nulls."
    return errors
