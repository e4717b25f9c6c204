"""LiveEmbedding: a frozen base EmbeddingBag plus a low-rank correction of its active rows.

Served row i = base[i] + (A[slot(i)] @ B) * scale when i is active, else base[i].
Shapes: N base rows, D dim, n active rows, r rank; A (n, r), B (r, D).

Everything but B grows with the active rows n, never with N: the slot map is the sorted key
array ``keys`` (n,) looked up with searchsorted, and A's row k belongs to ``keys[k]``. A key is
the row id plus ``key_offset`` (0 on its own; the trainer's fused LiveGroup gives each table a
disjoint key range and binds the module's tensors to views of its buffers, see live_group.py).
Per active row the module keeps A's row, its key, its last-use time and a row-wise Adagrad
accumulator; B has Adam moments. Like PEFT's LoRA layers it wraps its base layer and can merge
the delta into it and unmerge it again.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlrm_core.checkpoint import CheckpointError, read_container, write_container
from dlrm_core.factor_optim import adam_, rowwise_adagrad_
from dlrm_core.model import SparseArch

FACTORS_KIND = "live-factors"
FACTORS_FORMAT_VERSION = 1


@dataclass(frozen=True)
class LiveEmbeddingConfig:
    rank: int = 4  # initial r
    scale: float = 1.0  # delta = A @ B * scale (fixed, so rank changes keep the delta)
    seed: int = 0  # seeds B's initial orthonormal rows

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 1024:
            raise ValueError(f"rank must be in [1, 1024], got {self.rank}")
        if not (math.isfinite(self.scale) and 0 < self.scale <= 1e3):
            raise ValueError(f"scale must be in (0, 1000], got {self.scale}")


@dataclass(frozen=True)
class TableFactors:
    """An immutable copy of one table's correction (what a trainer publishes)."""

    ids: torch.Tensor  # (n,) int64, sorted, unique
    a: torch.Tensor  # (n, r)
    b: torch.Tensor  # (r, D)
    scale: float

    @property
    def rank(self) -> int:
        return int(self.b.shape[0])

    @property
    def num_active(self) -> int:
        return int(self.ids.shape[0])


@dataclass(frozen=True)
class MemoryReport:
    """Bytes of a LiveEmbedding's state against its base table."""

    a_bytes: int
    b_bytes: int
    slot_map_bytes: int  # sorted ids + last-use times
    optimizer_bytes: int  # row-wise Adagrad for A, Adam moments for B
    base_bytes: int

    @property
    def overhead_bytes(self) -> int:
        return self.a_bytes + self.b_bytes + self.slot_map_bytes + self.optimizer_bytes

    @property
    def overhead_pct(self) -> float:
        return 100.0 * self.overhead_bytes / self.base_bytes


_F32, _I64 = 4, 8


def row_bytes(rank: int) -> int:
    """Bytes per active row: A's row, its id, last-use time, Adagrad accumulator."""
    return _F32 * rank + _I64 + _F32 + _F32


def shared_bytes(rank: int, dim: int) -> int:
    """Bytes that do not depend on the active rows: B and its two Adam moments."""
    return 3 * _F32 * rank * dim


def overhead_bytes(num_active: int, rank: int, dim: int) -> int:
    """What a LiveEmbedding with these sizes reports as overhead_bytes."""
    return num_active * row_bytes(rank) + shared_bytes(rank, dim)


def lookup(keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(pos, hit), both like ``values``: the row of each value in the sorted ``keys`` where
    hit, a clamped position elsewhere."""
    pos = torch.searchsorted(keys, values)
    if keys.numel() == 0:
        return pos, torch.zeros_like(values, dtype=torch.bool)
    pos.clamp_(max=keys.numel() - 1)
    return pos, keys.index_select(0, pos) == values


def merge_sorted(
    keys: torch.Tensor,
    new: torch.Tensor,
    rows: list[tuple[torch.Tensor, float]],
    out: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Insert the sorted ``new`` keys (none in ``keys``) into the sorted ``keys`` (n,); each
    (tensor (n, ...), fill) in ``rows`` gets a row of ``fill`` at each new key. One gather per
    tensor (O(n + k log n), no sort of the whole set); ``out`` receives the results in place
    (it must not overlap the inputs)."""
    n, k = keys.numel(), new.numel()
    is_new = torch.zeros(n + k, dtype=torch.bool)
    is_new[torch.searchsorted(keys, new) + torch.arange(k)] = True
    seen = torch.cumsum(is_new, 0)  # new keys at or before each merged position
    src = torch.where(is_new, seen + (n - 1), torch.arange(n + k) - seen)  # in cat(old, new)
    out_keys, out_rows = out if out is not None else (None, [None] * len(rows))
    merged_keys = torch.index_select(torch.cat([keys, new]), 0, src, out=out_keys)
    merged = []
    for (t, fill), o in zip(rows, out_rows, strict=True):
        grown = torch.cat([t, t.new_full((k, *t.shape[1:]), fill)])
        merged.append(torch.index_select(grown, 0, src, out=o))
    return merged_keys, merged


class LiveEmbedding(nn.Module):
    """(values (nnz,), offsets (B,)) -> (B, D), like the EmbeddingBag it wraps (mode sum)."""

    keys: torch.Tensor
    last_used: torch.Tensor
    a_accum: torch.Tensor
    b_m: torch.Tensor
    b_v: torch.Tensor

    def __init__(self, base: nn.EmbeddingBag, config: LiveEmbeddingConfig | None = None):
        super().__init__()
        if base.mode != "sum" or base.padding_idx is not None:
            raise ValueError("LiveEmbedding wraps an EmbeddingBag with mode='sum', no padding")
        self.config = config or LiveEmbeddingConfig()
        self.base = base
        self.base.weight.requires_grad_(False)
        n, d = base.weight.shape
        if self.config.rank > d:
            raise ValueError(f"rank {self.config.rank} exceeds the embedding dim {d}")
        self.num_rows, self.dim = int(n), int(d)  # of the base table, fixed
        self.scale = self.config.scale
        self.merged = False
        # called with the (B, D) gradient of each forward's output (the rank controller
        # measures how much of it lies outside span(B))
        self.grad_observer: Callable[[torch.Tensor], None] | None = None
        self._folded: list[torch.Tensor] = []  # base rows changed by folds, see take_folded
        self.time_origin: float | None = None  # last_used holds seconds since this (float32)
        self.b_steps = 0
        self.key_offset = 0  # keys = ids + key_offset
        self.version = 0  # bumped whenever the state tensors are replaced (not updated in place)
        gen = torch.Generator().manual_seed(self.config.seed)
        q, _ = torch.linalg.qr(torch.randn(d, self.config.rank, generator=gen))
        self.A = nn.Parameter(torch.zeros(0, self.config.rank))
        self.B = nn.Parameter(q.T.contiguous())  # orthonormal rows, so a new row's delta is 0
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("last_used", torch.zeros(0))
        self.register_buffer("a_accum", torch.zeros(0))
        self.register_buffer("b_m", torch.zeros_like(self.B))
        self.register_buffer("b_v", torch.zeros_like(self.B))

    # ---- sizes -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.B.shape[0])

    @property
    def num_active(self) -> int:
        return int(self.keys.shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """(n,) sorted ids of the active rows."""
        return self.keys - self.key_offset if self.key_offset else self.keys

    def memory(self) -> MemoryReport:
        def nbytes(*ts: torch.Tensor) -> int:
            return sum(t.numel() * t.element_size() for t in ts)

        return MemoryReport(
            a_bytes=nbytes(self.A),
            b_bytes=nbytes(self.B),
            slot_map_bytes=nbytes(self.keys, self.last_used),
            optimizer_bytes=nbytes(self.a_accum, self.b_m, self.b_v),
            base_bytes=nbytes(self.base.weight),
        )

    # ---- serving -----------------------------------------------------------------------
    def slots(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, hit), both (nnz,): A's row of each id where hit, pos is clamped elsewhere."""
        return lookup(self.keys, values + self.key_offset if self.key_offset else values)

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        out = self.base(values, offsets)
        if self.merged or self.num_active == 0:
            return out
        pos, hit = self.slots(values)
        pooled_a = F.embedding_bag(  # (B, r); inactive ids weigh 0
            pos, self.A, offsets, mode="sum", sparse=True, per_sample_weights=hit.to(self.A.dtype)
        )
        out = torch.addmm(out, pooled_a, self.B, alpha=self.scale)  # out + pooled_a B scale
        if self.grad_observer is not None and out.requires_grad:
            out.register_hook(self.grad_observer)
        return out

    def get_delta_weight(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), D) delta of the given rows (zero for inactive rows)."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        out = torch.zeros(rows.shape[0], self.dim)
        if self.num_active:
            pos, hit = self.slots(rows)
            out[hit] = (self.A.detach()[pos[hit]] @ self.B.detach()) * self.scale
        return out

    def factors(self) -> TableFactors:
        """An immutable snapshot (cloned tensors) of the correction."""
        ids = self.keys - self.key_offset if self.key_offset else self.keys.clone()
        return TableFactors(ids, self.A.detach().clone(), self.B.detach().clone(), self.scale)

    def load_factors(self, factors: TableFactors) -> None:
        """Serve a copy of ``factors`` (e.g. a published version), so training this module
        never changes them; optimizer state restarts from zero."""
        self._check_mutable()
        _validate_factors(factors, self.num_rows, self.dim, "factors")
        n, r = factors.num_active, factors.rank
        self.keys = factors.ids + self.key_offset
        self.A = nn.Parameter(factors.a.clone())
        self.B = nn.Parameter(factors.b.clone())
        self.scale = factors.scale
        self.last_used = torch.zeros(n)
        self.a_accum = torch.zeros(n)
        self._reset_b_state(r)
        self.version += 1

    def bind(
        self,
        rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        b_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        key_offset: int,
    ) -> None:
        """Use the given tensors (views into a LiveGroup's buffers, same values as the current
        state up to the key offset) as the state, without copying: (keys, A, last_used,
        a_accum) and (B, b_m, b_v). The group updates them in place; A and B do not require
        grad here, the group trains its buffers."""
        # straight into the registries: Module.__setattr__'s checks cost more than the rest of
        # an admission step
        keys, a, last_used, a_accum = rows
        b, b_m, b_v = b_state
        self._buffers.update(keys=keys, last_used=last_used, a_accum=a_accum, b_m=b_m, b_v=b_v)
        self._parameters.update(
            A=nn.Parameter(a, requires_grad=False), B=nn.Parameter(b, requires_grad=False)
        )
        self.key_offset = key_offset

    # ---- active set --------------------------------------------------------------------
    def activate(self, values: torch.Tensor, now: float, max_active: int) -> tuple[int, int]:
        """Mark ``values`` as used at ``now`` and admit the new ones, most frequent in
        ``values`` first, while the active set stays <= max_active.
        Returns (admitted, refused) counts of distinct new ids."""
        self._check_mutable()
        if self.time_origin is None:
            self.time_origin = float(now)
        stamp = float(now) - self.time_origin
        uniq, counts = torch.unique(values, return_counts=True)
        pos, hit = self.slots(uniq)
        self.last_used[pos[hit]] = stamp
        room = max(max_active - self.num_active, 0)
        new, new_counts = uniq[~hit], counts[~hit]
        if room == 0 or new.numel() == 0:
            return 0, int(new.numel())
        if int(new[-1]) >= self.num_rows or int(new[0]) < 0:
            raise IndexError(f"ids must be in [0, {self.num_rows}), got {new.min()}..{new.max()}")
        refused = max(int(new.numel()) - room, 0)
        new = new[torch.argsort(new_counts, descending=True, stable=True)[:room]].sort().values
        self.keys, (a, self.last_used, self.a_accum) = merge_sorted(
            self.keys,
            new + self.key_offset,
            [(self.A.detach(), 0.0), (self.last_used, stamp), (self.a_accum, 0.0)],
        )
        self.A = nn.Parameter(a)
        self.version += 1
        return int(new.numel()), refused

    def evict(self, rows: torch.Tensor, fold: bool = True) -> int:
        """Remove ``rows`` from the active set, first folding their delta into the base copy
        (unless fold=False, which discards it). Returns the number of rows removed."""
        self._check_mutable()
        pos, hit = self.slots(torch.unique(torch.as_tensor(rows, dtype=torch.int64)))
        pos = pos[hit]
        if pos.numel() == 0:
            return 0
        if fold:
            folded = self.keys[pos] - self.key_offset
            with torch.no_grad():
                self.base.weight[folded] += (self.A[pos] @ self.B) * self.scale
            self._folded.append(folded)
        gone = torch.zeros(self.num_active, dtype=torch.bool)
        gone[pos] = True
        keep = torch.nonzero(~gone).squeeze(1)  # index_select beats boolean masks on rows
        self.keys = self.keys.index_select(0, keep)
        self.A = nn.Parameter(self.A.detach().index_select(0, keep))
        self.last_used = self.last_used.index_select(0, keep)
        self.a_accum = self.a_accum.index_select(0, keep)
        self.version += 1
        return int(pos.numel())

    def take_folded(self) -> torch.Tensor:
        """Sorted unique base rows changed by folds since the last call."""
        folded = torch.unique(torch.cat([torch.zeros(0, dtype=torch.int64), *self._folded]))
        self._folded = []
        return folded

    def ages(self, now: float) -> torch.Tensor:
        """(n,) seconds since each active row was last used."""
        origin = self.time_origin if self.time_origin is not None else float(now)
        return (float(now) - origin) - self.last_used.to(torch.float64)

    # ---- factors -----------------------------------------------------------------------
    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Replace A (n, k) and B (k, D) for the same active rows (a rank change). Row-wise
        Adagrad state is per row and kept; B's Adam moments restart at the new shape."""
        self._check_mutable()
        if a.shape[0] != self.num_active or a.shape[1] != b.shape[0] or b.shape[1] != self.dim:
            raise ValueError(
                f"set_factors needs A ({self.num_active}, k) and B (k, {self.dim}), "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        self.A = nn.Parameter(a.detach().contiguous().clone())
        self.B = nn.Parameter(b.detach().contiguous().clone())
        self._reset_b_state(int(b.shape[0]))
        self.version += 1

    def step(self, lr_a: float, lr_b: float) -> None:
        """Apply A.grad (row-wise Adagrad) and B.grad (Adam), then clear both grads."""
        self._check_mutable()
        with torch.no_grad():
            if self.A.grad is not None:
                rowwise_adagrad_(self.A.data, self.a_accum, self.A.grad, lr_a)
            if self.B.grad is not None:
                self.b_steps += 1
                adam_(self.B.data, self.B.grad, self.b_m, self.b_v, self.b_steps, lr_b)
        self.A.grad = None
        self.B.grad = None

    def _reset_b_state(self, rank: int) -> None:
        self.b_m = torch.zeros(rank, self.dim)
        self.b_v = torch.zeros(rank, self.dim)
        self.b_steps = 0

    # ---- merge (PEFT-style) ------------------------------------------------------------
    def merge(self) -> None:
        """Fold the delta into the base weights; forward then serves the base alone."""
        if self.merged:
            raise RuntimeError("LiveEmbedding is already merged")
        with torch.no_grad():
            self.base.weight[self.ids] += self.get_delta_weight(self.ids)
        self.merged = True

    def unmerge(self) -> None:
        """Take the delta back out of the base weights."""
        if not self.merged:
            raise RuntimeError("LiveEmbedding is not merged")
        with torch.no_grad():
            self.base.weight[self.ids] -= self.get_delta_weight(self.ids)
        self.merged = False

    def merged_copy(self) -> nn.EmbeddingBag:
        """A plain EmbeddingBag holding base + delta (the base itself is untouched)."""
        weight = self.base.weight.detach().clone()
        if not self.merged:
            weight[self.ids] += self.get_delta_weight(self.ids)
        return nn.EmbeddingBag.from_pretrained(weight, freeze=False, mode="sum", sparse=True)

    def _check_mutable(self) -> None:
        if self.merged:
            raise RuntimeError("unmerge the LiveEmbedding before changing its factors")

    # ---- export / import ---------------------------------------------------------------
    def export_factors(self, path: str | os.PathLike[str], table: str) -> str:
        """Write ids, A, B and last-use times with a version and sha256; returns the digest."""
        meta = {
            "table": table,
            "num_rows": self.num_rows,
            "dim": self.dim,
            "rank": self.rank,
            "scale": self.scale,
            "time_origin": self.time_origin,
        }
        # copies: the tensors may be views of a LiveGroup's buffers, which torch.save writes whole
        tensors = {
            "ids": self.ids.clone(),
            "a": self.A.detach().clone(),
            "b": self.B.detach().clone(),
            "last_used": self.last_used.clone(),
        }
        return write_container(path, FACTORS_KIND, FACTORS_FORMAT_VERSION, meta, tensors)

    def import_factors(self, path: str | os.PathLike[str], table: str) -> None:
        """Load factors written by export_factors for the same table shape, or refuse them."""
        meta, t = read_container(path, FACTORS_KIND, FACTORS_FORMAT_VERSION)
        want = {"table": table, "num_rows": self.num_rows, "dim": self.dim}
        for key, value in want.items():
            if meta.get(key) != value:
                raise CheckpointError(f"{path}: {key} is {meta.get(key)!r}, expected {value!r}")
        try:
            factors = TableFactors(t["ids"], t["a"], t["b"], float(meta["scale"]))
            _validate_factors(factors, self.num_rows, self.dim, str(path))
            if t["last_used"].shape != factors.ids.shape:
                raise ValueError("last_used must be (n,)")
        except (KeyError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{path}: invalid factors ({exc})") from exc
        self.load_factors(factors)
        self.last_used = t["last_used"].to(torch.float32)
        self.time_origin = meta.get("time_origin")


def _validate_factors(f: TableFactors, num_rows: int, dim: int, where: str) -> None:
    n = f.num_active
    if f.ids.dtype != torch.int64 or f.ids.dim() != 1:
        raise ValueError(f"{where}: ids must be an int64 vector")
    if n and (int(f.ids[0]) < 0 or int(f.ids[-1]) >= num_rows or bool((f.ids.diff() <= 0).any())):
        raise ValueError(f"{where}: ids must be sorted, unique and in [0, {num_rows})")
    if f.b.dim() != 2 or f.b.shape[1] != dim or f.a.shape != (n, f.b.shape[0]):
        raise ValueError(
            f"{where}: need A (n={n}, r) and B (r, D={dim}), got {tuple(f.a.shape)} and "
            f"{tuple(f.b.shape)}"
        )
    if not (bool(torch.isfinite(f.a).all()) and bool(torch.isfinite(f.b).all())):
        raise ValueError(f"{where}: factors hold non-finite values")


def attach_live_embeddings(
    sparse_arch: SparseArch, names: list[str] | tuple[str, ...], config: LiveEmbeddingConfig
) -> dict[str, LiveEmbedding]:
    """Wrap the named tables of a SparseArch in LiveEmbeddings, in place; returns them."""
    live = {}
    for name in names:
        table = sparse_arch.table(name)
        if not isinstance(table, nn.EmbeddingBag):
            raise ValueError(f"table {name!r} is already a {type(table).__name__}")
        live[name] = LiveEmbedding(table, config)
        sparse_arch.set_table(name, live[name])
    return live
