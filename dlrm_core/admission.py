"""The second-sighting gate: an id gets an active row only once it has been seen ``threshold``
times recently, so rows are not spent on the many ids that occur once (72% of the distinct ids
an hour on the synthetic stream).

A count-min sketch of DEPTH rows of ``width`` one-byte counters (saturating at 15, MAX_COUNT in
_admission_kernel.c: the gate needs small counts only) estimates each id's sightings from above;
conservative update raises only the counters that hold the minimum. After ``width`` // 2
sightings every counter is halved (TinyLFU's reset), so the estimates describe the recent stream
and the counters stay sparse enough to tell a returning id from a new one. Its bytes are fixed
by its width, which the table's budget sets.

Shapes: k distinct ids in a call, DEPTH x width counters.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dlrm_core.kernel import admission_kernel

if TYPE_CHECKING:
    from dlrm_core._admission_kernel import SketchSpec

DEPTH = 2  # as _admission_kernel.c has it
# odd 64-bit multipliers, one per sketch row (independent of the hash index's)
_MULTIPLIERS = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F)
_SIGNED = (_MULTIPLIERS[0] - (1 << 64), _MULTIPLIERS[1] - (1 << 64))  # as int64, for the kernel


_SINCE_RESET_BYTES = 8  # the int64 count of sightings since the last halving


class SightingSketch:
    """Recent sightings of ids, for RankPolicy.admit_after. The counting runs in the admission
    kernel (dlrm_core/_admission_kernel.c): on its own through ``sight``, or inside the trainer's
    admission pass through ``kernel_spec``."""

    def __init__(self, width_bits: int) -> None:
        if not 1 <= width_bits <= 40:
            raise ValueError(f"width_bits must be in [1, 40], got {width_bits}")
        self.width_bits = width_bits
        self.counters = torch.zeros(DEPTH, 1 << width_bits, dtype=torch.uint8)
        self.since_reset = torch.zeros(1, dtype=torch.int64)  # sightings since the last halving

    @staticmethod
    def bits_for(nbytes: int) -> int:
        """The widest sketch (width_bits) that fits in ``nbytes`` (0: none fits)."""
        per_row = (nbytes - _SINCE_RESET_BYTES) // DEPTH
        return per_row.bit_length() - 1 if per_row >= 2 else 0

    @property
    def nbytes(self) -> int:
        """Its counters' and since_reset's bytes, fixed by its width (asked for several times a
        step by the rank controller's room: arithmetic, not the tensors' sizes)."""
        return (DEPTH << self.width_bits) + _SINCE_RESET_BYTES

    @property
    def kernel_spec(self) -> SketchSpec:
        """The sketch as the admission kernel takes it: (counters pointer, width bits,
        since_reset pointer, multipliers), valid while this sketch lives (not cached: a copy of
        the sketch has other pointers)."""
        return (self.counters.data_ptr(), self.width_bits, self.since_reset.data_ptr(), _SIGNED)

    def sight(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Count ``counts`` (k,) more sightings of the distinct ``ids`` (k,); returns (k,) int:
        each id's estimated recent sightings, these included."""
        ids, counts = ids.to(torch.int64).contiguous(), counts.to(torch.int64).contiguous()
        if ids.shape != counts.shape or ids.dim() != 1:
            raise ValueError(f"ids {list(ids.shape)} and counts {list(counts.shape)}: (k,) each")
        estimate = torch.empty(ids.shape, dtype=torch.int64)
        admission_kernel.sight(
            self.kernel_spec, ids.data_ptr(), counts.data_ptr(), ids.numel(), estimate.data_ptr()
        )
        return estimate
