"""Memory as measured, not as budgeted: the bytes of the tensors a strategy actually holds, and
the process's memory as the OS reports it (/proc).

``held_tensor_bytes`` walks everything reachable from an object (attributes, containers,
modules' parameters and buffers) and sums the bytes of each distinct tensor *storage* it finds,
skipping the storages the caller excludes (the node's own base tables and MLPs, which any
strategy serves from). A view counts once, with its whole storage: a buffer allocated with
spare capacity costs its capacity, whatever the active rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn


def storage_key(t: torch.Tensor) -> int:
    return int(t.untyped_storage().data_ptr())


def model_storages(model: nn.Module) -> set[int]:
    """Storages of a model's parameters and buffers (what a node serves from anyway)."""
    tensors = [*model.parameters(), *model.buffers()]
    return {storage_key(t) for t in tensors if t.untyped_storage().nbytes()}


def held_tensor_bytes(root: object, exclude: set[int]) -> int:
    """Bytes of the distinct tensor storages reachable from ``root``, minus ``exclude``."""
    seen_objects: set[int] = set()
    storages: dict[int, int] = {}
    stack: list[Any] = [root]
    while stack:
        obj = stack.pop()
        kind = _KINDS.get(type(obj))
        if kind is None:
            kind = _KINDS[type(obj)] = _kind(obj)
        if kind == _SKIP or id(obj) in seen_objects:
            continue
        seen_objects.add(id(obj))
        if kind != _TENSOR:
            stack.extend(_CHILDREN[kind](obj))
        elif obj.layout != torch.strided:
            stack.extend(_sparse_parts(obj))
        else:
            storage = obj.untyped_storage()
            key = int(storage.data_ptr())
            if key and key not in exclude:
                storages[key] = max(storages.get(key, 0), int(storage.nbytes()))
    return sum(storages.values())


def _sparse_parts(t: torch.Tensor) -> list[torch.Tensor]:
    return [t._indices(), t._values()] if t.layout == torch.sparse_coo else []


# how the walk treats an object, by its type (found once per type: the walk meets the same few
# types thousands of times per measurement)
_SKIP, _TENSOR, _ITEMS, _VALUES, _MODULE, _FIELDS, _VARS, _SLOTS = range(8)
_KINDS: dict[type, int] = {}
_CHILDREN: dict[int, Callable[[Any], Iterable[Any]]] = {
    _ITEMS: lambda obj: list(obj.values()),
    _VALUES: list,
    _MODULE: lambda obj: [*obj.__dict__.values()],
    _FIELDS: lambda obj: [getattr(obj, f.name) for f in dataclasses.fields(obj)],
    _VARS: lambda obj: list(vars(obj).values()),
    _SLOTS: lambda obj: [getattr(obj, s) for s in obj.__slots__ if hasattr(obj, s)],
}


def _kind(obj: Any) -> int:
    if obj is None or isinstance(obj, str | bytes | int | float):
        return _SKIP
    if isinstance(obj, torch.Tensor):
        return _TENSOR
    if isinstance(obj, dict):
        return _ITEMS
    if isinstance(obj, list | tuple | set | frozenset) or type(obj).__name__ == "deque":
        return _VALUES
    if isinstance(obj, nn.Module):
        return _MODULE
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _FIELDS
    if hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
        return _VARS
    if hasattr(obj, "__slots__"):
        return _SLOTS
    return _SKIP


@dataclasses.dataclass(frozen=True)
class ProcessMemory:
    """The process's memory from /proc/self (bytes; None where /proc does not say)."""

    rss: int | None
    peak_rss: int | None  # VmHWM
    pss: int | None  # smaps_rollup

    def as_dict(self) -> dict[str, int | None]:
        return dataclasses.asdict(self)


def process_memory(proc: Path = Path("/proc/self")) -> ProcessMemory:
    status = _kib_fields(proc / "status")
    rollup = _kib_fields(proc / "smaps_rollup")
    return ProcessMemory(status.get("VmRSS"), status.get("VmHWM"), rollup.get("Pss"))


def _kib_fields(path: Path) -> dict[str, int]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB" and parts[0].isdigit():
            out[key.strip()] = int(parts[0]) * 1024
    return out
