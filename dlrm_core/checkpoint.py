"""Versioned, checksummed tensor files: DLRM checkpoints and LiveEmbedding factor exports.

Layout: MAGIC | u64 header length | header JSON | payload (torch.save of a name -> tensor dict)
| sha256(header JSON + payload). The header names the kind, the format version and the payload
length, plus free metadata (e.g. the model config). A file is refused with a CheckpointError
when it is not ours, of another kind or version, truncated, corrupt, or of a different config.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dlrm_core.model import DLRM, DLRMConfig

MAGIC = b"LIVEUPD\x00"
MODEL_KIND = "dlrm-model"
MODEL_FORMAT_VERSION = 1
_DIGEST_BYTES = 32
_LEN = struct.Struct("<Q")


class CheckpointError(ValueError):
    """A file that cannot be loaded safely; the message says why."""


def write_container(
    path: str | os.PathLike[str],
    kind: str,
    version: int,
    meta: dict[str, Any],
    tensors: dict[str, torch.Tensor],
) -> str:
    """Write atomically (temp file + rename); returns the sha256 hex digest."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, buf)
    payload = buf.getvalue()
    header = json.dumps(
        {"kind": kind, "format_version": version, "payload_bytes": len(payload), "meta": meta},
        sort_keys=True,
    ).encode()
    digest = hashlib.sha256(header + payload)
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(MAGIC + _LEN.pack(len(header)) + header + payload + digest.digest())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)
    return digest.hexdigest()


def read_container(
    path: str | os.PathLike[str], kind: str, version: int
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(meta, tensors) of a file written by write_container with this kind and version."""
    data = Path(path).read_bytes()
    where = f"{path}"
    if not data.startswith(MAGIC):
        raise CheckpointError(f"{where}: not a LiveUpdate tensor file (bad magic bytes)")
    start = len(MAGIC) + _LEN.size
    if len(data) < start:
        raise CheckpointError(f"{where}: truncated inside the header")
    (header_len,) = _LEN.unpack_from(data, len(MAGIC))
    if start + header_len > len(data):
        raise CheckpointError(f"{where}: truncated inside the header")
    header_bytes = data[start : start + header_len]
    try:
        header = json.loads(header_bytes)
        payload_len = int(header["payload_bytes"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{where}: corrupt header ({exc})") from exc
    body_end = start + header_len + payload_len
    if len(data) != body_end + _DIGEST_BYTES:
        raise CheckpointError(
            f"{where}: truncated or padded: {len(data)} bytes, expected {body_end + _DIGEST_BYTES}"
        )
    payload = data[start + header_len : body_end]
    if hashlib.sha256(header_bytes + payload).digest() != data[body_end:]:
        raise CheckpointError(f"{where}: sha256 checksum mismatch (file is corrupt)")
    if header.get("kind") != kind:
        raise CheckpointError(f"{where}: holds a {header.get('kind')!r}, expected {kind!r}")
    if header.get("format_version") != version:
        raise CheckpointError(
            f"{where}: format version {header.get('format_version')}, this code reads {version}"
        )
    tensors = torch.load(io.BytesIO(payload), weights_only=True)
    return header["meta"], tensors


def save_model(path: str | os.PathLike[str], model: DLRM) -> str:
    """Save a plain DLRM (config + weights); returns the sha256 hex digest."""
    for name, table in zip(model.config.feature_names, model.sparse_arch.tables, strict=True):
        if not isinstance(table, nn.EmbeddingBag):
            raise CheckpointError(
                f"table {name!r} is a {type(table).__name__}: merge or unwrap it into a plain "
                "EmbeddingBag before saving the model (export its factors separately)"
            )
    return write_container(
        path,
        MODEL_KIND,
        MODEL_FORMAT_VERSION,
        {"config": model.config.to_dict()},
        dict(model.state_dict()),
    )


def load_model(path: str | os.PathLike[str], expected: DLRMConfig | None = None) -> DLRM:
    """Load a DLRM saved by save_model; refuse it if its config differs from ``expected``."""
    meta, state = read_container(path, MODEL_KIND, MODEL_FORMAT_VERSION)
    try:
        config = DLRMConfig.from_dict(meta["config"])
    except (KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid model config ({exc})") from exc
    if expected is not None and config != expected:
        diffs = [
            f"{k}: file {v!r} != expected {getattr(expected, k)!r}"
            for k, v in vars(config).items()
            if getattr(expected, k) != v
        ]
        raise CheckpointError(f"{path}: config mismatch: {'; '.join(diffs)}")
    model = DLRM(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit the config ({exc})") from exc
    return model
