"""FoldBitmap: which base rows of one table a trainer has folded since its checkpoint, one bit
per base row (N / 8 bytes, fixed when made), so a node that folds for days holds the same bytes
as after its first hour; a per-id set grew by ~60 bytes per distinct folded row instead.

A snapshot writes the folded rows with their values (nodeworker.snapshots); a restart adds the
snapshot's rows back.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK_BYTES = 1 << 16  # ids() unpacks this many bytes (512k rows) at a time


class FoldBitmap:
    def __init__(self, num_rows: int) -> None:
        if not 0 <= num_rows < 2**31 - 1:
            raise ValueError(f"num_rows must be in [0, 2**31 - 1), got {num_rows}")
        self.num_rows = num_rows
        self._bits = np.zeros(self.nbytes_for(num_rows), dtype=np.uint8)

    @staticmethod
    def nbytes_for(num_rows: int) -> int:
        return (num_rows + 7) // 8

    @property
    def nbytes(self) -> int:
        return int(self._bits.nbytes)

    def add(self, ids: torch.Tensor) -> None:
        """Mark base rows ``ids`` (any order, repeats allowed) as folded."""
        rows = ids.numpy().astype(np.int64, copy=False)
        if rows.size and (int(rows.min()) < 0 or int(rows.max()) >= self.num_rows):
            raise IndexError(f"ids must be in [0, {self.num_rows}), got {rows.min()}..{rows.max()}")
        np.bitwise_or.at(self._bits, rows >> 3, (1 << (rows & 7)).astype(np.uint8))

    def ids(self) -> torch.Tensor:
        """(m,) int64 sorted ids of the rows marked."""
        parts = []
        for start in range(0, self._bits.size, _CHUNK_BYTES):
            chunk = np.unpackbits(self._bits[start : start + _CHUNK_BYTES], bitorder="little")
            parts.append(np.flatnonzero(chunk) + 8 * start)
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return torch.from_numpy(ids.astype(np.int64, copy=False))
