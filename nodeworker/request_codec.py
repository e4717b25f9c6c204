"""The one place where JSON requests become SparseBatches (and scores become JSON).

Predict body: ``{"requests": [{"sparse": {feature: value | [values]}, "dense": [floats]}]}``.
A categorical value is a string or an integer (its decimal text); it is hashed into its table
with the readers' stable hash (``dlrm_core.readers.hash_ids``), so any id, in range or not, maps
to a row, exactly as the training data did. ``null``, ``""`` and ``[]`` are the missing value
(row 0). Every schema feature must be present; unknown ones are refused.
Feedback body: ``{"request_id": int, "label": 0 | 1}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.readers import hash_ids
from dlrm_core.schema import StreamSchema


@dataclass(frozen=True)
class CodecLimits:
    max_batch: int = 512  # requests per predict call
    max_bag: int = 256  # values of one multi-hot feature
    max_value_chars: int = 256


class RequestError(ValueError):
    """Bad input: ``errors`` maps a field path to its message; ``status`` is the HTTP status."""

    def __init__(self, errors: dict[str, str], status: int = 400):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors
        self.status = status


def _value_error(value: Any, limits: CodecLimits) -> str | None:
    if (
        value is None
        or isinstance(value, str)
        or (isinstance(value, int) and not isinstance(value, bool))
    ):
        if isinstance(value, str) and len(value) > limits.max_value_chars:
            return f"Values are at most {limits.max_value_chars} characters."
        return None
    return "Must be a string, an integer, null, or a list of them."


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def parse_predict(body: Any, schema: StreamSchema, limits: CodecLimits) -> SparseBatch:
    """A SparseBatch of the requests (labels 0, request ids 0..B-1 until the node assigns them);
    raises RequestError with every field error at once."""
    if not isinstance(body, dict):
        raise RequestError({"body": 'Must be a JSON object {"requests": [...]}.'})
    unknown = sorted(set(body) - {"requests"})
    requests = body.get("requests")
    if not isinstance(requests, list) or not requests:
        raise RequestError({"requests": "Must be a non-empty list of requests."})
    if len(requests) > limits.max_batch:
        raise RequestError(
            {"requests": f"At most {limits.max_batch} requests per call, got {len(requests)}."},
            status=413,
        )
    errors: dict[str, str] = {k: "Unknown field." for k in unknown}
    names = schema.keys
    bags: list[list[list[str]]] = [[] for _ in names]
    dense = np.zeros((len(requests), schema.n_dense), dtype=np.float32)
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, dict):
            errors[where] = 'Must be an object {"sparse": {...}, "dense": [...]}.'
            continue
        for extra in sorted(set(item) - {"sparse", "dense"}):
            errors[f"{where}.{extra}"] = "Unknown field."
        _parse_sparse(item.get("sparse"), where, names, limits, bags, errors)
        raw_dense = item.get("dense", [] if schema.n_dense == 0 else None)
        if (
            not isinstance(raw_dense, list)
            or len(raw_dense) != schema.n_dense
            or not all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in raw_dense
            )
        ):
            errors[f"{where}.dense"] = f"Must be a list of {schema.n_dense} finite numbers."
        else:
            dense[i] = raw_dense
    if errors:
        raise RequestError(errors)
    ids = [_hashed(bags[f], spec.num_rows) for f, spec in enumerate(schema.sparse)]
    n = len(requests)
    return SparseBatch.from_ids(names, ids, torch.from_numpy(dense), torch.zeros(n))


def _parse_sparse(
    sparse: Any,
    where: str,
    names: tuple[str, ...],
    limits: CodecLimits,
    bags: list[list[list[str]]],
    errors: dict[str, str],
) -> None:
    """Append one request's values of each feature to ``bags``, or its errors to ``errors``."""
    if not isinstance(sparse, dict):
        errors[f"{where}.sparse"] = "Must be an object of feature -> value(s)."
        return
    for name in sorted(set(sparse) - set(names)):
        errors[f"{where}.sparse.{name}"] = "Unknown feature."
    for f, name in enumerate(names):
        path = f"{where}.sparse.{name}"
        if name not in sparse:
            errors[path] = "This feature is required (null or [] when missing)."
            continue
        raw = sparse[name]
        values = raw if isinstance(raw, list) else [raw]
        if len(values) > limits.max_bag:
            errors[path] = f"At most {limits.max_bag} values per feature."
            continue
        problem = next((p for v in values if (p := _value_error(v, limits))), None)
        if problem:
            errors[path] = problem
            continue
        bags[f].append([_text(v) for v in values] or [""])  # "" hashes to row 0


def _hashed(bags: list[list[str]], num_rows: int) -> list[list[int]]:
    """Each request's bag of one feature as row ids, hashed in one call."""
    flat = [t for bag in bags for t in bag]
    hashed = hash_ids(flat, num_rows).tolist()
    per_sample, k = [], 0
    for bag in bags:
        per_sample.append(hashed[k : k + len(bag)])
        k += len(bag)
    return per_sample


def parse_feedback(body: Any) -> tuple[int, float]:
    if not isinstance(body, dict):
        raise RequestError({"body": 'Must be a JSON object {"request_id": ..., "label": 0 | 1}.'})
    errors = {k: "Unknown field." for k in sorted(set(body) - {"request_id", "label"})}
    rid, label = body.get("request_id"), body.get("label")
    if not isinstance(rid, int) or isinstance(rid, bool) or not 0 <= rid < 2**63:
        errors["request_id"] = "Must be a request id returned by /v1/predict."
    if isinstance(label, bool) or label not in (0, 1):
        errors["label"] = "Must be 0 or 1."
    if errors:
        raise RequestError(errors)
    return cast(int, rid), float(cast(int, label))  # both checked above


def predict_response(scores: torch.Tensor, request_ids: torch.Tensor, version: int) -> dict:
    return {
        "scores": [round(float(s), 6) for s in scores.tolist()],
        "request_ids": request_ids.tolist(),
        "model_version": version,
    }
