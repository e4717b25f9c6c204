"""An exact hash index from non-negative integer keys to their row numbers, for the serving path.

Bucketed cuckoo hashing: 2**bits buckets of BUCKET slots, each bucket its BUCKET keys then their
(1 + row)s, one 64-byte cache line for int32 keys; every key sits in one of its two buckets. The
build fills first buckets while they have room, so at load MAX_LOAD ~95% of keys sit in their
first bucket: a lookup of an indexed key is one random cache line, of a key that is not indexed
two, and the bucket's keys are compared in two vector ops. The three-choice table of single
slots it replaces loaded three lines for every id, and a binary search over the sorted keys
before that ~21 dependent ones. Build and lookups run in the serving kernel
(dlrm_core/_serving_kernel.c); lookups prefetch the buckets of ids ahead, first buckets for all
ids, then second buckets for the ids not found.

Memory grows with the keys, never with the key range: BUCKET * 2**bits slots (8 bytes each for
int32 keys), the least power of two that keeps the load <= MAX_LOAD, so 9.4 to 19 bytes per key.
Hashes are multiplicative (Knuth): bucket c of a key is the top ``bits`` of ``key * m_c`` modulo
2**32 (int32 keys) or 2**64 (int64 keys).

Shapes: n keys, 2**bits buckets of BUCKET slots, q queries.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from dlrm_core import hugepages
from dlrm_core.kernel import serving_kernel

BUCKET = 8  # slots per bucket, as _serving_kernel.c has it
MAX_LOAD = 0.85  # two choices of 8-slot buckets stay placeable up to ~0.98
# Odd 64-bit constants (golden ratio and an xxHash prime); int32 keys use their top 32 bits.
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F)


@dataclass(frozen=True)
class CuckooIndex:
    bits: int  # 2**bits buckets
    multipliers: torch.Tensor  # (2,) odd constants, the keys' dtype
    # (2**bits, 2, BUCKET) the keys' dtype: each bucket's keys, then 1 + their rows; (-1, 0) in
    # empty slots
    slots: torch.Tensor

    @staticmethod
    def build(keys: torch.Tensor) -> CuckooIndex:
        """Index of ``keys`` (n,) int32 or int64, unique and >= 0; row i is ``keys[i]``."""
        if keys.dtype not in (torch.int32, torch.int64) or keys.dim() != 1:
            raise TypeError(f"keys must be 1-d int32 or int64, got {keys.dtype} {list(keys.shape)}")
        n = keys.numel()
        if n >= 2**31 - 1:
            raise ValueError(f"at most 2**31 - 2 keys (int32 rows), got {n}")
        if n and int(keys.min()) < 0:
            raise ValueError("keys must be >= 0")
        keys = keys.contiguous()
        width = keys.element_size() * 8
        multipliers = _multipliers(keys.dtype)
        bits = max(1, math.ceil(math.log2(max(n, 1) / (BUCKET * MAX_LOAD))))
        while bits < width:
            slots = hugepages.empty((1 << bits, 2, BUCKET), keys.dtype)
            index = CuckooIndex(bits, multipliers, slots)
            if serving_kernel.build(index.kernel_spec, keys.data_ptr(), n):
                return index
            bits += 1  # a cycle of evictions: twice the buckets
        raise RuntimeError(f"could not place {n} keys")  # unreachable for unique keys

    @staticmethod
    def empty(bits: int, dtype: torch.dtype = torch.int32) -> CuckooIndex:
        """An index of 2**bits buckets holding no key, for ``assign`` to fill (on ordinary
        pages: an index that grows by assignment is small, and huge pages would round it up)."""
        slots = torch.zeros((1 << bits, 2, BUCKET), dtype=dtype)
        slots[:, 0] = -1  # empty slots: key -1, row 0
        return CuckooIndex(bits, _multipliers(dtype), slots)

    def __post_init__(self) -> None:
        # the kernel reads slots through a raw pointer: their layout must be exactly this
        dtype = self.slots.dtype
        if dtype not in (torch.int32, torch.int64) or self.multipliers.dtype != dtype:
            raise TypeError(f"slots and multipliers must be int32 or int64 alike, got {dtype}")
        if not 1 <= self.bits < dtype.itemsize * 8:
            raise ValueError(f"bits must be in [1, {dtype.itemsize * 8}), got {self.bits}")
        if self.slots.shape != (1 << self.bits, 2, BUCKET) or not self.slots.is_contiguous():
            raise ValueError(
                f"slots must be contiguous (2**bits, 2, BUCKET), got {list(self.slots.shape)}"
            )
        if self.multipliers.shape != (2,):
            raise ValueError("two multipliers, one per bucket choice")

    @property
    def nbytes(self) -> int:
        tensors = (self.slots, self.multipliers)
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def key_dtype(self) -> torch.dtype:
        return self.slots.dtype

    @property
    def max_row(self) -> int:
        """The largest 1 + row any slot holds (0 when empty): what a table of rows must cover."""
        return int(self.slots[:, 1].max())

    @functools.cached_property
    def kernel_spec(self) -> tuple[int, int, int, tuple[int, int]]:
        """The index as the serving kernel takes it: (slots pointer, bits, key width,
        multipliers). Valid while this index (which holds ``slots``) lives."""
        m0, m1 = self.multipliers.tolist()
        return (self.slots.data_ptr(), self.bits, self.slots.element_size() * 8, (m0, m1))

    def rows(self, queries: torch.Tensor) -> torch.Tensor:
        """(q,) int32: 1 + the row of each query key (any integer dtype), 0 where the key is not
        indexed."""
        queries = queries.to(torch.int64).contiguous()
        rows = torch.empty(queries.shape, dtype=torch.int32)
        serving_kernel.lookup(
            self.kernel_spec, queries.data_ptr(), queries.numel(), rows.data_ptr()
        )
        return rows

    def assign(self, keys: torch.Tensor, rows: torch.Tensor) -> bool:
        """Index ``keys`` (k,) unique, >= 0, at ``rows`` (k,) (a key already indexed moves to its
        new row). False when one found no room: the index then misses some key, rebuild it."""
        keys, rows = keys.to(torch.int64).contiguous(), rows.to(torch.int64).contiguous()
        if keys.shape != rows.shape:
            raise ValueError(f"keys {list(keys.shape)} and rows {list(rows.shape)} differ")
        k = keys.numel()
        done = serving_kernel.assign(self.kernel_spec, keys.data_ptr(), rows.data_ptr(), k)
        return bool(done == k)

    def unassign(self, keys: torch.Tensor) -> int:
        """Remove ``keys`` (k,); returns how many were indexed."""
        keys = keys.to(torch.int64).contiguous()
        return int(serving_kernel.unassign(self.kernel_spec, keys.data_ptr(), keys.numel()))


@functools.cache  # constants: one tensor per key dtype, shared by the indexes (never written)
def _multipliers(dtype: torch.dtype) -> torch.Tensor:
    width = dtype.itemsize * 8
    return torch.tensor([_signed(c >> (64 - width) | 1, width) for c in _MULTIPLIERS], dtype=dtype)


def _signed(value: int, width: int) -> int:
    return value - (1 << width) if value >= 1 << (width - 1) else value
