"""What the training cluster sends a node's ``apply_delta``, checked: the rows per table, the
MLPs of a delta rebase and the sync's time stamps. Bad input raises InvalidRequest with
field-level messages."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import torch

from dlrm_core.experiment.cluster import dense_state
from dlrm_core.model import DLRM, base_weight
from nodeworker.control_socket import InvalidRequest
from nodeworker.protocol import telemetry as protocol_telemetry


def parse_dense(model: DLRM, dense: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The cluster's MLPs: every MLP parameter of the node's model (dense_state's names),
    each of its shape, finite."""
    expected = dense_state(model)
    errors = {f"dense.{n}": "Unknown MLP parameter." for n in dense if n not in expected}
    parsed = {}
    for name, current in expected.items():
        try:
            value = torch.as_tensor(dense[name], dtype=torch.float32)
        except KeyError:
            errors[f"dense.{name}"] = "Missing: a rebase carries every MLP parameter."
            continue
        except (TypeError, ValueError):
            errors[f"dense.{name}"] = "Must be a number array."
            continue
        if value.shape != current.shape:
            errors[f"dense.{name}"] = f"Must be of shape {list(current.shape)}."
        elif not bool(torch.isfinite(value).all()):
            errors[f"dense.{name}"] = "Values must be finite."
        else:
            parsed[name] = value
    if errors:
        raise InvalidRequest(errors)
    return parsed


def parse_deltas(
    model: DLRM, deltas: dict[str, Any]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    errors: dict[str, str] = {}
    parsed = {}
    dim = model.config.embedding_dim
    for table, delta in deltas.items():
        if table not in model.config.feature_names:
            errors[f"deltas.{table}"] = "Unknown table."
            continue
        try:
            rows = torch.as_tensor(delta["rows"], dtype=torch.int64)
            values = torch.as_tensor(delta["values"], dtype=torch.float32)
        except (KeyError, TypeError, ValueError):
            errors[f"deltas.{table}"] = 'Must be {"rows": [N ids], "values": [N x D]}.'
            continue
        n_rows = base_weight(model, table).shape[0]
        if rows.dim() != 1 or values.shape != (rows.shape[0], dim):
            errors[f"deltas.{table}"] = f"Need N row ids and N x {dim} values."
        elif rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_rows):
            errors[f"deltas.{table}.rows"] = f"Row ids must be in [0, {n_rows})."
        elif not bool(torch.isfinite(values).all()):
            errors[f"deltas.{table}.values"] = "Values must be finite."
        else:
            parsed[table] = (rows, values)
    if errors:
        raise InvalidRequest(errors)
    return parsed


def nbytes(tensors: Iterable[torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def sync_stamps(created_at: Any, trained_until: Any) -> dict[str, float]:
    """apply_delta's optional stamps, checked against this node's clock
    (protocol_telemetry.TimeWindow)."""
    stamps, errors = {}, {}
    for name, value in (("created_at", created_at), ("trained_until", trained_until)):
        if value is None:
            continue
        error = protocol_telemetry.TimeWindow().error(value, time.time())
        if error:
            errors[name] = error
        else:
            stamps[name] = float(value)
    if errors:
        raise InvalidRequest(errors)
    return stamps
