"""The second-sighting gate: an id gets an active row only once it has been seen ``threshold``
times recently, so rows are not spent on the many ids that occur once (72% of the distinct ids
an hour on the synthetic stream).

A count-min sketch of DEPTH rows of ``width`` one-byte counters (saturating at MAX_COUNT)
estimates each id's sightings from above; conservative update raises only the counters that
hold the minimum. After ``width`` // 2 sightings every counter is halved (TinyLFU's reset), so
the estimates describe the recent stream and the counters stay sparse enough to tell a returning
id from a new one. Its bytes are fixed by its width, which the table's budget sets.

Shapes: k distinct ids in a call, DEPTH x width counters.
"""

from __future__ import annotations

import torch

DEPTH = 2
MAX_COUNT = 15  # counters saturate here: the gate needs small counts only
# odd 64-bit multipliers, one per sketch row (independent of the hash index's)
_MULTIPLIERS = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F)


class SightingSketch:
    """Recent sightings of ids, for RankPolicy.admit_after."""

    def __init__(self, width_bits: int) -> None:
        if not 1 <= width_bits <= 40:
            raise ValueError(f"width_bits must be in [1, 40], got {width_bits}")
        self.width_bits = width_bits
        self.counters = torch.zeros(DEPTH, 1 << width_bits, dtype=torch.uint8)
        self._multipliers = torch.tensor(
            [m - (1 << 64) if m >= 1 << 63 else m for m in _MULTIPLIERS], dtype=torch.int64
        ).view(DEPTH, 1)
        self._since_reset = 0

    @staticmethod
    def bits_for(nbytes: int) -> int:
        """The widest sketch (width_bits) that fits in ``nbytes`` (0: none fits)."""
        per_row = nbytes // DEPTH
        return per_row.bit_length() - 1 if per_row >= 2 else 0

    @property
    def nbytes(self) -> int:
        return self.counters.numel() * self.counters.element_size()

    def _buckets(self, ids: torch.Tensor) -> torch.Tensor:
        """(DEPTH, k) counter of each id in each row: the top bits of id * m (mod 2**64)."""
        product = ids.view(1, -1) * self._multipliers  # wraps modulo 2**64
        return (product >> (64 - self.width_bits)) & ((1 << self.width_bits) - 1)

    def sight(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        """Count ``counts`` (k,) more sightings of the distinct ``ids`` (k,); returns (k,) int:
        each id's estimated recent sightings, these included."""
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        buckets = self._buckets(ids)
        current = torch.gather(self.counters, 1, buckets).to(torch.int64)  # (DEPTH, k)
        estimate = (current.min(0).values + counts).clamp_(max=MAX_COUNT)
        # conservative update: raise each counter to the new estimate, never lower it
        raised = estimate.to(torch.uint8).expand(DEPTH, -1)
        self.counters.scatter_reduce_(1, buckets, raised, reduce="amax")
        self._since_reset += int(ids.numel())
        if self._since_reset >= self.counters.shape[1] // 2:
            self.counters >>= 1
            self._since_reset = 0
        return estimate
