"""What the inference process and the trainer process share, as memory-mapped files in a
shared-memory directory (``/dev/shm/...``): the base embedding tables and the published LoRA
factor versions.

Base tables: one file per table, N x D float32. Inference maps them shared (it applies folded
rows and delta-sync rows in place); the trainer maps them copy-on-write (MAP_PRIVATE), so its
folds never touch what inference serves until the version that carries them is installed, and
untouched pages stay one physical copy.

Factor versions: a seqlock-protected double buffer per node. The single writer fills the slot
inference is not reading, bumping that slot's sequence number to odd before and to even after,
then flips ``current``. A reader copies the current slot and keeps the copy only if the slot's
sequence was even and unchanged across the copy, so it gets one whole version, never a mix.
(Stores and loads of the int64 header are ordered on x86-64 (TSO), the only target here.)
The files are sparse: only the bytes a version actually uses occupy memory. The writer gives
back (MADV_REMOVE) the pages of a slot past what the version it writes there uses, so a slot
holds one version's bytes, never the most any version ever used (held_bytes measures them;
the trainer's budget plans for them, see row_budget.node_copy_bytes).

A version holds each table's factors and, built by the writer (the trainer, on its own cpus),
the same version in serving layout: the ServingDelta's groups (hash index slots, A with its zero
row, B * scale). Inference installs a version by copying that layout out (read_serving), a
memcpy, instead of building it on the inference cpu (the hash index alone is most of a build).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dlrm_core import hugepages
from dlrm_core.hash_index import BUCKET, CuckooIndex
from dlrm_core.model import DLRM, base_bag
from dlrm_core.row_budget import PAGE, row_bytes
from dlrm_core.serving import RankGroup, ServingDelta
from dlrm_core.table_factors import TableFactors
from nodeworker.slot_pages import allocated, give_back, layout_bytes


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


def map_base_tables(model: DLRM, directory: Path, shared: bool) -> None:
    """Make the model's tables use the shared files: shared=True for the process that serves
    (and writes patches), False (copy-on-write) for the trainer."""
    for name in model.config.feature_names:
        bag = base_bag(model, name)
        n, d = bag.weight.shape
        mapped = _map(table_path(directory, name), n * d * 4, shared).view(torch.float32)
        bag.weight = nn.Parameter(mapped.view(n, d), requires_grad=False)


# --- factor versions -----------------------------------------------------------------------


@dataclass(frozen=True)
class TableCapacity:
    rows: int  # max active rows
    a_floats: int  # max n x r
    rank: int  # max r
    dim: int  # D

    @staticmethod
    def for_budget(budget_bytes: int, dim: int, max_rank: int) -> TableCapacity:
        """Room for any state a budget can hold: rows at rank 1, n x r floats <= budget / 4."""
        rows = max(1, budget_bytes // row_bytes(1))
        return TableCapacity(rows, max(1, budget_bytes // 4), min(max_rank, dim), dim)

    @property
    def regions(self) -> tuple[int, int, int]:
        """Bytes of a slot's ids, A and B, each rounded up to whole pages: every region starts
        on a page, so a version that uses L bytes of it holds at most L + 1 page of it."""
        raw = (8 * self.rows, 4 * self.a_floats, 4 * self.rank * self.dim)
        return tuple(_paged(n) for n in raw)  # type: ignore[return-value]

    @property
    def slot_bytes(self) -> int:
        return sum(self.regions)


# header (int64): current, then per slot: seq, version; per slot per table: n, r; per slot: aux;
# per slot: serving groups; per slot per group: _GROUP_FIELDS, features, key offsets.
# float64 area after it: per slot: created_at; per slot per table: scale.
_H_CURRENT = 0
# per serving group: tables, index bits, rank, rows of A, key bytes, the index's 2 multipliers
_GROUP_FIELDS = 7


def _paged(nbytes: int) -> int:
    return -(-nbytes // PAGE) * PAGE


def _aligned(nbytes: int) -> int:
    return -(-nbytes // 8) * 8  # every tensor of a slot starts 8-byte aligned


def serving_capacity_bytes(capacities: Mapping[str, TableCapacity]) -> int:
    """Room for the serving layout of any version the capacities allow: A with one zero row per
    group, B, and hash-index slots (< 2 x n / MAX_LOAD + 2 buckets per group of n keys, twice
    that if a build needed one more bit; 16 bytes for int64 keys). Sparse: unused room costs
    nothing."""
    rows = sum(c.rows for c in capacities.values())
    a = sum(c.a_floats + c.rank for c in capacities.values())
    b = sum(c.rank * c.dim for c in capacities.values())
    index_slots = 5 * rows + 4 * BUCKET * len(capacities)
    return 16 * index_slots + 4 * (a + b) + 3 * 8 * len(capacities)


@dataclass(frozen=True)
class FactorSnapshot:
    version: int
    created_at: float
    tables: Mapping[str, TableFactors]
    aux: int = 0  # the writer's counter published with the version (base patches sent)


@dataclass(frozen=True)
class ServingSnapshot:
    version: int
    created_at: float
    delta: ServingDelta
    aux: int = 0


class SharedFactors:
    """Seqlock double buffer of factor versions for the tables ``capacities`` names."""

    def __init__(self, directory: Path, capacities: Mapping[str, TableCapacity], create: bool):
        self.dir = directory
        self.names = tuple(capacities)
        self.caps = dict(capacities)
        n_tables = len(self.names)
        self._group_ints = _GROUP_FIELDS + 2 * n_tables
        self._serving_header = 2 + 2 * n_tables * self._group_ints
        self._ints = 1 + 2 * 2 + 2 * 2 * n_tables + 2 + self._serving_header
        self._floats = 2 + 2 * n_tables
        header_bytes = 8 * (self._ints + self._floats)
        self.serving_bytes = _paged(serving_capacity_bytes(self.caps))  # a slot starts a page
        self.dir.mkdir(parents=True, exist_ok=True)
        header_path = self.dir / "factors-header.bin"
        serving_path = self.dir / "factors-serving.bin"
        if create:
            _create(header_path, header_bytes)
            _create(serving_path, 2 * self.serving_bytes)
            for name, cap in self.caps.items():
                _create(self._table_path(name), 2 * cap.slot_bytes)
        raw = _map(header_path, header_bytes, shared=True)
        self._hi = raw[: 8 * self._ints].view(torch.int64)
        self._hf = raw[8 * self._ints :].view(torch.float64)
        serving = _map(serving_path, 2 * self.serving_bytes, shared=True)
        self._serving = [
            serving[s * self.serving_bytes : (s + 1) * self.serving_bytes] for s in range(2)
        ]
        self._slots: dict[str, list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        # per slot: each table's bytes of the serving layout written there (write)
        self._layout_bytes: list[dict[str, int]] = [{}, {}]
        for name, cap in self.caps.items():
            seg = _map(self._table_path(name), 2 * cap.slot_bytes, shared=True)
            slots = []
            ids_bytes, a_bytes, b_bytes = cap.regions
            for s in range(2):
                base = s * cap.slot_bytes
                ids = seg[base : base + 8 * cap.rows].view(torch.int64)
                base += ids_bytes
                a = seg[base : base + 4 * cap.a_floats].view(torch.float32)
                base += a_bytes
                b = seg[base : base + 4 * cap.rank * cap.dim].view(torch.float32)
                slots.append((ids, a, b))
            self._slots[name] = slots

    def _table_path(self, name: str) -> Path:
        return self.dir / f"factors-{name}.bin"

    def _seq(self, s: int) -> int:
        return 1 + 2 * s

    def _ver(self, s: int) -> int:
        return 2 + 2 * s

    def _nr(self, s: int, t: int) -> int:
        return 5 + 2 * (s * len(self.names) + t)

    def _aux(self, s: int) -> int:
        return 5 + 4 * len(self.names) + s

    def _groups(self, s: int) -> int:
        return 7 + 4 * len(self.names) + s

    def _group(self, s: int, g: int) -> int:
        return 9 + 4 * len(self.names) + (s * len(self.names) + g) * self._group_ints

    def _scale(self, s: int, t: int) -> int:
        return 2 + s * len(self.names) + t

    @property
    def version(self) -> int:
        """The newest complete version (0: none yet)."""
        return int(self._hi[self._ver(int(self._hi[_H_CURRENT]))])

    def write(
        self,
        version: int,
        created_at: float,
        tables: Mapping[str, TableFactors],
        serving: ServingDelta,
        aux: int = 0,
    ) -> None:
        """Publish ``tables`` as ``version``, with ``serving`` (built from them) for inference
        (single writer)."""
        for name, f in tables.items():
            cap = self.caps[name]
            if f.num_active > cap.rows or f.num_active * f.rank > cap.a_floats or f.rank > cap.rank:
                raise ValueError(
                    f"factors of {name!r} (n={f.num_active}, r={f.rank}) exceed the shared "
                    f"capacity (rows={cap.rows}, n*r={cap.a_floats}, r={cap.rank})"
                )
        layout = [(g.index.slots, g.a, g.b) for g in serving.groups]
        need = sum(_aligned(t.numel() * t.element_size()) for group in layout for t in group)
        if need > self.serving_bytes or len(serving.groups) > len(self.names):
            raise ValueError(
                f"the serving layout of version {version} ({need} bytes, "
                f"{len(serving.groups)} groups) exceeds the shared capacity ({self.serving_bytes})"
            )
        s = 1 - int(self._hi[_H_CURRENT])
        self._hi[self._seq(s)] += 1  # odd: being written
        for t, name in enumerate(self.names):
            f = tables[name]
            n, r = f.num_active, f.rank
            ids, a, b = self._slots[name][s]
            ids[:n].copy_(f.ids)
            a[: n * r].copy_(f.a.reshape(-1))
            b[: r * f.b.shape[1]].copy_(f.b.reshape(-1))
            for region, used in ((ids, n), (a, n * r), (b, r * f.b.shape[1])):
                give_back(region, used * region.element_size())
            self._hi[self._nr(s, t)] = n
            self._hi[self._nr(s, t) + 1] = r
            self._hf[self._scale(s, t)] = f.scale
        arena, pos = self._serving[s], 0
        for g, (group, tensors) in enumerate(zip(serving.groups, layout, strict=True)):
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
                pos += _aligned(nbytes)
        give_back(arena, pos)
        self._layout_bytes[s] = layout_bytes(self.names, tables, serving)
        self._hi[self._groups(s)] = len(serving.groups)
        self._hi[self._ver(s)] = version
        self._hi[self._aux(s)] = aux
        self._hf[s] = created_at
        self._hi[self._seq(s)] += 1  # even: complete
        self._hi[_H_CURRENT] = s

    def held_bytes(self) -> dict[str, int]:
        """By table, what the node holds of it outside its trainer, from the allocated blocks
        of the slot files: its factor file (both slots), its share of the serving file (as
        its layouts are of the layouts written) and inference's installed copy (at most the
        larger of its two layouts)."""
        serving = allocated(self.dir / "factors-serving.bin")
        written = sum(sum(slot.values()) for slot in self._layout_bytes)
        out = {}
        for name in self.names:
            mine = [slot.get(name, 0) for slot in self._layout_bytes]
            share = serving * sum(mine) // written if written else 0
            out[name] = allocated(self._table_path(name)) + share + max(mine)
        return out

    def read(self, newer_than: int = 0, max_tries: int = 1000) -> FactorSnapshot | None:
        """A private copy of the current version's factors if it is newer than ``newer_than``."""
        return self._consistent(self._copy_factors, newer_than, max_tries)

    def read_serving(self, newer_than: int = 0, max_tries: int = 1000) -> ServingSnapshot | None:
        """A private copy of the current version's serving layout, as a ServingDelta, if it is
        newer than ``newer_than``."""
        return self._consistent(self._copy_serving, newer_than, max_tries)

    def _consistent(self, copy, newer_than: int, max_tries: int):
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
                copied = copy(s, version)
            except (RuntimeError, ValueError):  # sizes torn by a writer reusing the slot
                copied = None
            if copied is None or int(self._hi[self._seq(s)]) != q1:
                continue  # the writer reused this slot while we copied: try again
            return copied(created_at, aux)
        raise RuntimeError(f"no consistent factor version after {max_tries} tries")

    def _copy_factors(self, s: int, version: int):
        tables = {}
        for t, name in enumerate(self.names):
            n = int(self._hi[self._nr(s, t)])
            r = int(self._hi[self._nr(s, t) + 1])
            ids, a, b = self._slots[name][s]
            d = self.caps[name].dim
            scale = float(self._hf[self._scale(s, t)])
            tables[name] = (ids[:n].clone(), a[: n * r].clone(), b[: r * d].clone(), r, scale)

        def snapshot(created_at: float, aux: int) -> FactorSnapshot:
            return FactorSnapshot(
                version,
                created_at,
                {
                    name: TableFactors(ids, a.view(-1, r), b.view(r, -1), scale)
                    for name, (ids, a, b, r, scale) in tables.items()
                },
                aux,
            )

        return snapshot

    def _copy_serving(self, s: int, version: int):
        arena, pos, groups = self._serving[s], 0, []
        dim = next(iter(self.caps.values())).dim
        for g in range(int(self._hi[self._groups(s)])):
            h = self._group(s, g)
            fields = self._hi[h : h + _GROUP_FIELDS].tolist()
            n_tables, bits, rank, a_rows, key_bytes = fields[:5]
            key_dtype = torch.int32 if key_bytes == 4 else torch.int64
            features = h + _GROUP_FIELDS
            feature_positions = self._hi[features : features + n_tables].tolist()
            offsets = features + len(self.names)
            key_offsets = self._hi[offsets : offsets + n_tables].clone()
            copied = []
            for dtype, shape in (
                (key_dtype, (1 << bits, 2, BUCKET)),
                (torch.float32, (a_rows, rank)),
                (torch.float32, (n_tables, rank, dim)),
            ):
                nbytes = math.prod(shape) * dtype.itemsize
                if pos + nbytes > self.serving_bytes:
                    raise ValueError("a serving group past the slot's end")
                copied.append(
                    hugepages.empty(shape, dtype).copy_(
                        arena[pos : pos + nbytes].view(dtype).view(shape)
                    )
                )
                pos += _aligned(nbytes)
            slots, a, b = copied
            multipliers = torch.tensor(fields[5:7], dtype=key_dtype)
            groups.append(
                RankGroup(
                    tuple(feature_positions),
                    key_offsets,
                    CuckooIndex(bits, multipliers, slots),
                    a,
                    b,
                )
            )

        def snapshot(created_at: float, aux: int) -> ServingSnapshot:
            return ServingSnapshot(version, created_at, ServingDelta(version, tuple(groups)), aux)

        return snapshot


def budget_bytes(weight: torch.Tensor, pct: float) -> int:
    return int(math.floor(weight.numel() * weight.element_size() * pct / 100.0))
