"""Factor snapshots on disk: what a crash restart, a restart of the node and a rebase that keeps
its factors resume from.

A snapshot is a directory ``snap-<ns>`` under ``data_dir/snapshots`` holding, per trained table,
its factors (``<table>.factors``, table_factors.export_factors) and the base rows the trainer
folded since the checkpoint (``<table>.patch``), the top MLP layers it tuned if it tuned any
(TOP_FILE, nodeworker.tuned_top), plus ``snapshot.json`` (the base checkpoint it
belongs to, its factor version). ``LATEST`` names the newest complete one: it is replaced only
after the snapshot's files are written, so a crash while writing leaves the previous one latest.
The trainer process writes the table files (write_table_files); the node process keeps the
directory (SnapshotDirectory).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dlrm_core.checkpoint import CheckpointError, read_container, write_container
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.model import DLRM, base_weight
from dlrm_core.table_factors import FACTORS_FORMAT_VERSION, FACTORS_KIND, export_factors
from nodeworker.node_events import NodeEvents

log = logging.getLogger(__name__)

PATCH_KIND = "base-patch"
TOP_KIND = "tuned-top"
TOP_FILE = "top-mlp.tuned.patch"  # not a table's: a table's files are <table>.factors/.patch
KEEP_SNAPSHOTS = 3


def write_table_files(
    lives: Mapping[str, LiveEmbedding], folded: Mapping[str, torch.Tensor], directory: Path
) -> dict[str, str]:
    """Each table's factors (export_factors) and the rows folded into its base since the
    checkpoint (``folded``: sorted ids per table); returns table -> the factor file's digest."""
    directory.mkdir(parents=True, exist_ok=True)
    digests = {}
    for name, live in lives.items():
        digests[name] = export_factors(live, directory / f"{name}.factors", name)
        ids = folded.get(name, torch.zeros(0, dtype=torch.int64))
        rows = live.base.weight.detach()[ids].clone()
        write_container(
            directory / f"{name}.patch", PATCH_KIND, 1, {"table": name}, {"ids": ids, "rows": rows}
        )
    return digests


def write_top(directory: Path, weights: Mapping[str, np.ndarray]) -> None:
    """The top MLP layers the trainer tuned (nodeworker.tuned_top), by parameter name, when
    it tuned any: the served model's top as of the snapshot's version. A ``.patch`` file, so a
    rebase that keeps its factors drops it with the folded rows (the new base's MLPs win)."""
    if weights:
        tensors = {name: torch.from_numpy(value) for name, value in weights.items()}
        write_container(directory / TOP_FILE, TOP_KIND, 1, {}, tensors)


def read_top(directory: Path) -> dict[str, np.ndarray]:
    """The tuned top MLP layers a snapshot holds ({}: none)."""
    path = directory / TOP_FILE
    if not path.exists():
        return {}
    _, tensors = read_container(path, TOP_KIND, 1)
    return {name: value.numpy() for name, value in tensors.items()}


def read_patch(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids (m,) int64, rows (m, D)) of a ``<table>.patch`` file."""
    _, tensors = read_container(path, PATCH_KIND, 1)
    return tensors["ids"], tensors["rows"]


def apply_patch_files(model: DLRM, directory: Path, tables: Iterable[str]) -> None:
    """Write the folded rows a snapshot holds into ``model``'s base tables."""
    for name in tables:
        path = directory / f"{name}.patch"
        if path.exists():
            ids, rows = read_patch(path)
            with torch.no_grad():
                base_weight(model, name)[ids] = rows


def table_files_error(directory: Path, tables: Iterable[str]) -> str | None:
    """Why the factor and patch files of a snapshot cannot be restored, or None."""
    for table in tables:
        for suffix, kind, version in (
            (".factors", FACTORS_KIND, FACTORS_FORMAT_VERSION),
            (".patch", PATCH_KIND, 1),
        ):
            path = directory / f"{table}{suffix}"
            if not path.exists():
                continue
            try:
                meta, _ = read_container(path, kind, version)
            except CheckpointError as exc:
                return str(exc)
            if meta.get("table") != table:
                return f"{path}: holds table {meta.get('table')!r}, expected {table!r}"
    return None


@dataclass(frozen=True)
class SnapshotMeta:
    checkpoint: str  # the base checkpoint the factors were learnt on
    version: int
    ts: float
    auc: float | None = None  # the node's AUC when it was taken (None: not enough labels)
    # table -> {"rank": its rank, "rows": the base rows folded since the checkpoint}
    tables: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "version": self.version,
            "ts": self.ts,
            "auc": self.auc,
            "tables": self.tables,
        }

    @classmethod
    def read(cls, directory: Path) -> SnapshotMeta:
        """A snapshot's ``snapshot.json`` (one written before auc and tables were recorded
        lacks them); OSError or ValueError when it cannot be read."""
        meta = json.loads((directory / "snapshot.json").read_text())
        auc = meta.get("auc")
        return cls(
            checkpoint=str(meta["checkpoint"]),
            version=int(meta["version"]),
            ts=float(meta["ts"]),
            auc=float(auc) if isinstance(auc, int | float) else None,
            tables=meta.get("tables") if isinstance(meta.get("tables"), dict) else {},
        )


def folded_rows(directory: Path, tables: Iterable[str]) -> dict[str, int]:
    """How many base rows each table's ``.patch`` in ``directory`` holds."""
    counts = {}
    for name in tables:
        path = directory / f"{name}.patch"
        counts[name] = int(read_patch(path)[0].numel()) if path.exists() else 0
    return counts


class SnapshotDirectory:
    """``data_dir/snapshots``: names new snapshots, commits them, finds the one to restore."""

    def __init__(self, root: Path, events: NodeEvents):
        self.root = root
        self.events = events

    def new(self, prefix: str = "snap") -> Path:
        """A fresh directory path for the trainer to write a snapshot into."""
        return self.root / f"{prefix}-{time.time_ns()}"

    def commit(self, directory: Path, meta: SnapshotMeta) -> None:
        """Make ``directory`` (its table files written) the latest; keep the newest few."""
        (directory / "snapshot.json").write_text(json.dumps(meta.as_dict()))
        self.make_latest(directory.name)  # complete before it becomes the latest
        for old in sorted(self.root.glob("snap-*"))[:-KEEP_SNAPSHOTS]:
            shutil.rmtree(old, ignore_errors=True)

    def make_latest(self, name: str | None) -> None:
        """What a crash restart resumes until the next snapshot: ``name``, or the bare base
        (None; a restore of the base)."""
        pointer = self.root / "LATEST"
        if name is None:
            pointer.unlink(missing_ok=True)
            return
        tmp = pointer.with_suffix(".tmp")
        tmp.write_text(name)
        os.replace(tmp, pointer)

    def listing(self) -> list[tuple[str, SnapshotMeta]]:
        """Every complete snapshot (its snapshot.json written), newest first."""
        found = []
        for directory in sorted(self.root.glob("snap-*"), reverse=True):
            try:
                found.append((directory.name, SnapshotMeta.read(directory)))
            except (OSError, ValueError, KeyError, TypeError):
                continue  # being written, or unreadable: not offered
        return found

    def last_good(self, checkpoint: str, min_auc: float | None) -> str | None:
        """The newest snapshot on ``checkpoint`` taken with AUC >= ``min_auc`` (any AUC when
        None), or None."""
        for name, meta in self.listing():
            if meta.checkpoint != checkpoint:
                continue
            if min_auc is None or (meta.auc is not None and meta.auc >= min_auc):
                return name
        return None

    def restorable(self, checkpoint: str, tables: tuple[str, ...]) -> Path | None:
        """The latest intact snapshot taken on this base checkpoint (a crash restart resumes
        it). A snapshot whose files fail their checksum is refused with an event saying why,
        and the one before it is used: a corrupt file must not keep the trainer from starting."""
        pointer = self.root / "LATEST"
        if not pointer.exists():
            return None
        latest = pointer.read_text().strip()
        candidates = sorted(
            (d.name for d in self.root.glob("snap-*") if d.name <= latest), reverse=True
        )
        for name in candidates or [latest]:
            directory = self.root / name
            try:
                meta = json.loads((directory / "snapshot.json").read_text())
            except (OSError, ValueError):
                log.warning("snapshot %s is unreadable; trying an older one", directory)
                continue
            if meta.get("checkpoint") != checkpoint:
                log.info("snapshot %s belongs to another base checkpoint; not restored", directory)
                return None
            error = table_files_error(directory, tables)
            if error:
                log.error("snapshot %s refused: %s", directory, error)
                self.events.add("snapshot", {"refused": name, "error": error})
                continue
            self.events.add("snapshot", {"restored": name, **meta})
            return directory
        return None
