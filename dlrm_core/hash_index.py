"""An exact hash index from non-negative integer keys to their row numbers, for the serving path.

Cuckoo hashing with three choices: every key sits in one of the three slots its hashes name, so a
lookup is at most three independent probes, each one random load of a (key, row) pair. Lookups run
in the serving kernel (dlrm_core/_serving_kernel.c), which prefetches the slots of ids ahead. A
binary search over the sorted keys (what it replaces) costs ~21 dependent loads per id and
dominated the low-rank correction's forward time.
Memory grows with the keys, never with the key range: 2**bits slots (8 bytes each for int32 keys),
the least power of two that keeps the load <= MAX_LOAD, so 9.4 to 19 bytes per key.

The build is vectorised too (the parallel cuckoo insertion of GPU hash tables): all unplaced keys
write themselves into their current slot at once; a key that finds its slot taken by another
writer of the same round tries its next choice; a key that a winner evicts moves to its next
choice. Rounds repeat until every key is placed (~100 at load 0.8, most of them moving few keys).

Hashes are multiplicative (Knuth): the top ``bits`` of ``key * c`` modulo 2**32 (int32 keys) or
2**64 (int64 keys), torch's integer product wrapping around like the hardware's.

Shapes: n keys, M = 2**bits slots, q queries.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

from dlrm_core import _serving_kernel

MAX_LOAD = 0.85  # three-choice cuckoo hashing stays placeable up to ~0.91
MAX_ROUNDS = 500  # a build still running then has met a cycle: retry with twice the slots
# Odd 64-bit constants (golden ratio and two xxHash primes); int32 keys use their top 32 bits.
_MULTIPLIERS = (0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9)


@dataclass(frozen=True)
class CuckooIndex:
    bits: int
    multipliers: torch.Tensor  # (3, 1) odd constants, the keys' dtype
    # (M, 2) the keys' dtype: (key, 1 + its row) in each slot, (-1, 0) in empty ones. A probe
    # loads the pair as one element of twice the width: one random load per probe.
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
        width = keys.element_size() * 8
        multipliers = torch.tensor(
            [_signed(c >> (64 - width) | 1, width) for c in _MULTIPLIERS], dtype=keys.dtype
        ).unsqueeze(1)
        bits = max(1, math.ceil(math.log2(max(n, 1) / MAX_LOAD)))
        while bits < width:
            slot_rows = _place(_slots(keys, multipliers, bits, width), bits)
            if slot_rows is not None:
                row_keys = torch.cat([keys.new_full((1,), -1), keys])  # row 0: empty slots
                slot_keys = row_keys.index_select(0, slot_rows)
                slots = torch.stack([slot_keys, slot_rows.to(keys.dtype)], dim=1)
                return CuckooIndex(bits, multipliers, slots)
            bits += 1
        raise RuntimeError(f"could not place {n} keys")  # unreachable for unique keys

    @property
    def nbytes(self) -> int:
        return self.slots.numel() * self.slots.element_size()

    @property
    def key_dtype(self) -> torch.dtype:
        return self.slots.dtype

    def rows(self, queries: torch.Tensor) -> torch.Tensor:
        """(q,) int32: 1 + the row of each query key (any integer dtype), 0 where the key is not
        indexed."""
        queries = queries.to(torch.int64).contiguous()
        rows = torch.empty(queries.shape, dtype=torch.int32)
        _serving_kernel.lookup(
            self.kernel_spec, queries.data_ptr(), queries.numel(), rows.data_ptr()
        )
        return rows

    @property
    def max_row(self) -> int:
        """The largest 1 + row any slot holds (0 when empty): what a table of rows must cover."""
        return int(self.slots[:, 1].max())

    @functools.cached_property
    def kernel_spec(self) -> tuple[int, int, int, tuple[int, int, int]]:
        """The index as the serving kernel takes it: (slots pointer, bits, key width,
        multipliers). Valid while this index (which holds ``slots``) lives."""
        width = self.slots.element_size() * 8
        m0, m1, m2 = self.multipliers.view(-1).tolist()
        return (self.slots.data_ptr(), self.bits, width, (m0, m1, m2))

    def __post_init__(self) -> None:
        # the kernel reads slots through a raw pointer: their layout must be exactly this
        dtype = self.slots.dtype
        if dtype not in (torch.int32, torch.int64) or self.multipliers.dtype != dtype:
            raise TypeError(f"slots and multipliers must be int32 or int64 alike, got {dtype}")
        if not 1 <= self.bits < dtype.itemsize * 8:
            raise ValueError(f"bits must be in [1, {dtype.itemsize * 8}), got {self.bits}")
        if self.slots.shape != (1 << self.bits, 2) or not self.slots.is_contiguous():
            raise ValueError(f"slots must be contiguous (2**bits, 2), got {list(self.slots.shape)}")
        if self.multipliers.numel() != 3:
            raise ValueError("three multipliers, one per choice")


def _signed(value: int, width: int) -> int:
    return value - (1 << width) if value >= 1 << (width - 1) else value


def _slots(keys: torch.Tensor, multipliers: torch.Tensor, bits: int, width: int) -> torch.Tensor:
    """(3 * n,) the three candidate slots of every key, choice-major."""
    hashed = keys * multipliers  # (3, n); in place from here: no more (3, n) allocations
    return hashed.bitwise_right_shift_(width - bits).bitwise_and_((1 << bits) - 1).view(-1)


def _place(slots: torch.Tensor, bits: int) -> torch.Tensor | None:
    """(M,) int64: 1 + the key in each slot, 0 if empty, for keys whose candidate slots are
    ``slots`` (3 * n,); None on a cycle.

    A placement is a flat index c * n + i into ``slots`` (key i in its choice c), so an evicted
    key's next choice is its placement + n, modulo 3 * n."""
    n = slots.numel() // 3
    if not n:
        return torch.zeros(1 << bits, dtype=torch.int64)
    owner = torch.full((1 << bits,), -1, dtype=torch.int64)  # placement in each slot
    # Round one: every key writes its first choice into the empty table.
    keys = torch.arange(n)
    first = slots[:n].to(torch.int64)
    owner.scatter_(0, first, keys)  # of several writers to one slot, one wins: any one
    pending = (owner.index_select(0, first) != keys).nonzero().view(-1).add_(n)
    for _ in range(MAX_ROUNDS):
        if not pending.numel():
            empty = owner < 0
            return owner.remainder_(n).add_(1).masked_fill_(empty, 0)
        slot = slots.index_select(0, pending).to(torch.int64)
        previous = owner.index_select(0, slot)
        owner.scatter_(0, slot, pending)
        won = owner.index_select(0, slot) == pending
        evicted = previous.masked_select(won & (previous >= 0))
        pending = torch.cat([pending.masked_select(~won), evicted]).add_(n).remainder_(3 * n)
    return None
