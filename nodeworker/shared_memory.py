"""What the inference process and the trainer process share, as memory-mapped files in a
shared-memory directory (``/dev/shm/...``): the base embedding tables and the published LoRA
factor versions.

Base tables: one file per table, N x D float32. Inference maps them shared (it applies folded
rows and delta-sync rows in place); the trainer maps them copy-on-write (MAP_PRIVATE), so its
folds never touch what inference serves until the version that carries them is installed, and
untouched pages stay one physical copy.

Factor versions: a double buffer per node, in one file for all tables, that inference serves
in place. The single writer fills the slot that is not ``current``, bumping that slot's sequence
number to odd before and to even after, then flips ``current``; it may fill that slot only once
inference has installed the current version (``installed``, which inference stores after its
swap), so the slot it fills is never the one being served, nor one being read for an install.
A reader takes views of the current slot and keeps them only if the slot's sequence was even
and unchanged across the read, so it gets one whole version, never a mix (int64 header stores
and loads are ordered on x86-64, TSO: a load is never moved after a later store).
A slot is one arena: every rank group's tensors packed at offsets the header's sizes give,
so a version ends in one partly used page per slot, not one per table region (a page floor
small tables' budgets cannot pay). The file is sparse and the writer gives back (MADV_REMOVE) a
slot's pages past its version, so a slot never holds the most any version used (held_bytes
measures it; nodeworker/node_budget.py plans for it).

A version is the factors in serving layout, built by the writer (the trainer, on its own cpus):
the ServingDelta's groups (hash index slots, A with its zero row, B * scale). Inference installs
a version by taking views of that layout (read_serving): no build on the inference cpu (the
hash index alone is most of a build) and no copy. The factors themselves are not published:
nothing on the node reads them (snapshots come from the trainer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dlrm_core.hash_index import BUCKET, CuckooIndex
from dlrm_core.model import DLRM, base_bag
from dlrm_core.serving import RankGroup, ServingDelta
from dlrm_core.table_factors import TableFactors
from nodeworker.slot_pages import (
    TableCapacity,
    aligned,
    allocated,
    give_back,
    layout_bytes,
    paged,
    serving_capacity_bytes,
)


def _map(path: Path, nbytes: int, shared: bool) -> torch.Tensor:
    return torch.from_file(str(path), shared=shared, size=nbytes, dtype=torch.uint8)


def _create(path: Path, nbytes: int) -> None:
    with path.open("wb") as f:
        f.truncate(nbytes)  # sparse until written


# --- base tables ---------------------------------------------------------------------------


def table_path(directory: Path, name: str) -> Path:
    return directory / f"base-{name}.f32"


def write_base_tables(model: DLRM, directory: Path) -> None:
    """Copy the model's table weights into the shared files (creating them)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in model.config.feature_names:
        weight = base_bag(model, name).weight.detach()
        path = table_path(directory, name)
        _create(path, weight.numel() * 4)
        mapped = _map(path, weight.numel() * 4, shared=True).view(torch.float32)
        mapped.view_as(weight).copy_(weight)


def map_base_table(directory: Path, name: str, shape: torch.Size, shared: bool) -> torch.Tensor:
    """Table ``name``'s shared file as a (rows, dim) tensor, mapped shared or copy-on-write."""
    mapped = _map(table_path(directory, name), shape.numel() * 4, shared)
    return mapped.view(torch.float32).view(shape)


def map_base_tables(model: DLRM, directory: Path, shared: bool) -> None:
    """Make the model's tables use the shared files: shared=True for the process that serves
    (and writes patches), False (copy-on-write) for the trainer."""
    for name in model.config.feature_names:
        bag = base_bag(model, name)
        mapped = map_base_table(directory, name, bag.weight.shape, shared)
        bag.weight = nn.Parameter(mapped, requires_grad=False)


# --- factor versions -----------------------------------------------------------------------


# header (int64): current, then per slot: seq, version; per slot: aux; per slot: serving
# groups; installed; per slot per group: _GROUP_FIELDS, features, key offsets.
# float64 area after it: per slot: created_at.
_H_CURRENT, _H_INSTALLED = 0, 9
# per serving group: tables, index bits, rank, rows of A, key bytes, the index's 2 multipliers
_GROUP_FIELDS = 7


@dataclass(frozen=True)
class ServingSnapshot:
    version: int
    created_at: float
    delta: ServingDelta
    aux: int = 0  # the writer's counter published with the version (base patches sent)


class SharedFactors:
    """Seqlock double buffer of factor versions for the tables ``capacities`` names."""

    def __init__(self, directory: Path, capacities: Mapping[str, TableCapacity], create: bool):
        self.dir = directory
        self.names = tuple(capacities)
        self.caps = dict(capacities)
        n_tables = len(self.names)
        self._group_ints = _GROUP_FIELDS + 2 * n_tables
        self._serving_header = 2 + 2 * n_tables * self._group_ints
        self._ints = 1 + 2 * 2 + 2 + self._serving_header + 1
        self._floats = 2
        header_bytes = 8 * (self._ints + self._floats)
        self.serving_bytes = serving_capacity_bytes(self.caps)
        self.slot_bytes = paged(self.serving_bytes)  # a slot starts a page
        self.dir.mkdir(parents=True, exist_ok=True)
        header_path = self.dir / "factors-header.bin"
        self.slots_path = self.dir / "factors-slots.bin"
        if create:
            _create(header_path, header_bytes)
            _create(self.slots_path, 2 * self.slot_bytes)
        raw = _map(header_path, header_bytes, shared=True)
        self._hi = raw[: 8 * self._ints].view(torch.int64)
        self._hf = raw[8 * self._ints :].view(torch.float64)
        arenas = _map(self.slots_path, 2 * self.slot_bytes, shared=True)
        self._arenas = [arenas[s * self.slot_bytes : (s + 1) * self.slot_bytes] for s in range(2)]
        # per slot: each table's bytes of the layout written there (write), for held_bytes
        self._written: list[dict[str, int]] = [{}, {}]

    def _seq(self, s: int) -> int:
        return 1 + 2 * s

    def _ver(self, s: int) -> int:
        return 2 + 2 * s

    def _aux(self, s: int) -> int:
        return 5 + s

    def _groups(self, s: int) -> int:
        return 7 + s

    def _group(self, s: int, g: int) -> int:
        return 10 + (s * len(self.names) + g) * self._group_ints

    @property
    def version(self) -> int:
        """The newest complete version (0: none yet)."""
        return int(self._hi[self._ver(int(self._hi[_H_CURRENT]))])

    def writable(self) -> bool:
        """Inference has installed the newest version (or serves none): the other slot is
        free for the next one."""
        return int(self._hi[_H_INSTALLED]) >= self.version

    def wait_writable(self, timeout_s: float) -> bool:
        """``writable``, polling every millisecond for up to ``timeout_s`` (inference installs
        within its poll, nodeworker/version_installer.py POLL_S)."""
        deadline = time.monotonic() + timeout_s
        while not self.writable():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)
        return True

    def installed(self, version: int) -> None:
        """Inference serves ``version`` (from the current slot) and no longer reads the other
        one. Call it after the swap; ``version`` = self.version when it serves none."""
        self._hi[_H_INSTALLED] = max(int(self._hi[_H_INSTALLED]), version)

    def write(
        self,
        version: int,
        created_at: float,
        tables: Mapping[str, TableFactors],
        serving: ServingDelta,
        aux: int = 0,
    ) -> None:
        """Publish ``serving`` (built from ``tables``) as ``version`` for inference (single
        writer, only while ``writable``)."""
        if not self.writable():
            raise RuntimeError(f"inference has not installed version {self.version} yet")
        self._check_room(version, tables, serving)
        s = 1 - int(self._hi[_H_CURRENT])
        self._hi[self._seq(s)] |= 1  # odd: being written (already odd if a writer died here)
        pos = self._write_layout(s, serving)
        give_back(self._arenas[s], pos)
        self._written[s] = layout_bytes(self.names, tables, serving)
        self._hi[self._groups(s)] = len(serving.groups)
        self._hi[self._ver(s)] = version
        self._hi[self._aux(s)] = aux
        self._hf[s] = created_at
        self._hi[self._seq(s)] += 1  # even: complete
        self._hi[_H_CURRENT] = s

    def _check_room(
        self, version: int, tables: Mapping[str, TableFactors], serving: ServingDelta
    ) -> None:
        for name, f in tables.items():
            cap = self.caps[name]
            if f.num_active > cap.rows or f.num_active * f.rank > cap.a_floats or f.rank > cap.rank:
                raise ValueError(
                    f"factors of {name!r} (n={f.num_active}, r={f.rank}) exceed the shared "
                    f"capacity (rows={cap.rows}, n*r={cap.a_floats}, r={cap.rank})"
                )
        layout = [t for g in serving.groups for t in (g.index.slots, g.a, g.b)]
        need = sum(aligned(t.numel() * t.element_size()) for t in layout)
        if need > self.serving_bytes or len(serving.groups) > len(self.names):
            raise ValueError(
                f"the serving layout of version {version} ({need} bytes, "
                f"{len(serving.groups)} groups) exceeds the shared capacity ({self.serving_bytes})"
            )

    def _write_layout(self, s: int, serving: ServingDelta) -> int:
        """The serving layout into slot ``s``'s arena; returns its bytes."""
        arena, pos = self._arenas[s], 0
        for g, group in enumerate(serving.groups):
            tensors = (group.index.slots, group.a, group.b)
            slots, a, _ = tensors
            n_tables = len(group.features)
            h = self._group(s, g)
            self._hi[h : h + _GROUP_FIELDS] = torch.tensor(
                [n_tables, group.index.bits, a.shape[1], a.shape[0], slots.element_size()]
                + group.index.multipliers.view(-1).tolist()
            )
            features = h + _GROUP_FIELDS
            self._hi[features : features + n_tables] = torch.tensor(group.features)
            offsets = features + len(self.names)
            self._hi[offsets : offsets + n_tables] = group.key_offsets
            for tensor in tensors:
                nbytes = tensor.numel() * tensor.element_size()
                arena[pos : pos + nbytes].view(tensor.dtype).copy_(tensor.reshape(-1))
                pos += aligned(nbytes)
        return pos

    def held_bytes(self) -> dict[str, int]:
        """By table, what the node holds of it outside its trainer: its share of the slot
        file's allocated blocks (as its bytes are of the bytes written in both slots, so the
        shares add up to the file, its partly used pages included). Inference serves from the
        slots: it holds no copy."""
        held = allocated(self.slots_path)
        written = sum(sum(slot.values()) for slot in self._written)
        out = {}
        for name in self.names:
            mine = sum(slot.get(name, 0) for slot in self._written)
            out[name] = held * mine // written if written else 0
        return out

    def read_serving(self, newer_than: int = 0, max_tries: int = 1000) -> ServingSnapshot | None:
        """The current version's serving layout as a ServingDelta viewing its slot, if it is
        newer than ``newer_than``. It stays whole while the writer waits for ``installed``: an
        installer serves it and then calls installed(version)."""
        return self._consistent(self._view_serving, newer_than, max_tries)

    def _consistent(self, view, newer_than: int, max_tries: int):
        for _ in range(max_tries):
            s = int(self._hi[_H_CURRENT])
            q1 = int(self._hi[self._seq(s)])
            if q1 % 2:
                continue
            version = int(self._hi[self._ver(s)])
            if version <= newer_than:
                return None
            created_at = float(self._hf[s])
            aux = int(self._hi[self._aux(s)])
            try:
                viewed = view(s, version)
            except (RuntimeError, ValueError):  # sizes torn by a writer reusing the slot
                viewed = None
            if viewed is None or int(self._hi[self._seq(s)]) != q1:
                continue  # the writer reused this slot while we read it: try again
            return viewed(created_at, aux)
        raise RuntimeError(f"no consistent factor version after {max_tries} tries")

    def _view_serving(self, s: int, version: int):
        arena = self._arenas[s]
        dim = next(iter(self.caps.values())).dim
        shapes, pos = [], 0  # per group: its header fields and its tensors' (dtype, shape, at)
        for g in range(int(self._hi[self._groups(s)])):
            h = self._group(s, g)
            fields = self._hi[h : h + _GROUP_FIELDS].tolist()
            n_tables, bits, rank, a_rows, key_bytes = fields[:5]
            key_dtype = torch.int32 if key_bytes == 4 else torch.int64
            tensors = []
            for dtype, shape in (
                (key_dtype, (1 << bits, 2, BUCKET)),
                (torch.float32, (a_rows, rank)),
                (torch.float32, (n_tables, rank, dim)),
            ):
                tensors.append((dtype, shape, pos))
                pos += aligned(math.prod(shape) * dtype.itemsize)
            shapes.append((h, fields, tensors))
        if pos > self.serving_bytes:
            raise ValueError("a serving layout past the slot's end")
        groups = []
        for h, fields, tensors in shapes:
            n_tables, bits = fields[0], fields[1]
            key_dtype = tensors[0][0]
            slots, a, b = (
                arena[at : at + math.prod(shape) * dtype.itemsize].view(dtype).view(shape)
                for dtype, shape, at in tensors
            )
            features = h + _GROUP_FIELDS
            offsets = features + len(self.names)
            groups.append(
                RankGroup(
                    tuple(self._hi[features : features + n_tables].tolist()),
                    self._hi[offsets : offsets + n_tables].clone(),
                    CuckooIndex(bits, torch.tensor(fields[5:7], dtype=key_dtype), slots),
                    a,
                    b,
                )
            )

        def snapshot(created_at: float, aux: int) -> ServingSnapshot:
            return ServingSnapshot(version, created_at, ServingDelta(version, tuple(groups)), aux)

        return snapshot
