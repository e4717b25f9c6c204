"""Stable hashing of categorical values into a table's rows, vectorised over a batch.

``fnv1a64`` is FNV-1a (64-bit) over the Unicode code points of each string: for ASCII text it is
exactly the standard FNV-1a of the bytes. ``hash_ids`` mixes it with the splitmix64 finaliser (so
the low bits are well spread) and maps it to ``1 + h % (num_rows - 1)``; the empty string, the
missing value, always maps to row 0, which is reserved for "missing" in every table.
The hash never changes between processes or Python versions (unlike the salted ``hash()``).
numpy drops trailing NUL characters of strings, so "a" and "a\\0" hash alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

MISSING_ROW = 0
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def fnv1a64(values: Sequence[str] | np.ndarray) -> np.ndarray:
    """(n,) uint64 FNV-1a hashes of the strings' code points."""
    arr = np.asarray(values, dtype=np.str_).reshape(-1)
    n = arr.shape[0]
    width = arr.dtype.itemsize // 4
    h = np.full(n, _FNV_OFFSET, dtype=np.uint64)
    if n == 0 or width == 0:
        return h
    codes = arr.view(np.uint32).reshape(n, width)
    lengths = np.char.str_len(arr)
    shortest = int(lengths.min())
    with np.errstate(over="ignore"):
        for j in range(width):
            step = (h ^ codes[:, j].astype(np.uint64)) * _FNV_PRIME
            # Positions past a string's end are padding and leave its hash alone.
            h = step if j < shortest else np.where(lengths > j, step, h)
    return h


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_ids(values: Sequence[str] | np.ndarray, num_rows: int) -> np.ndarray:
    """(n,) int64 row ids in [0, num_rows): "" -> 0 (missing), anything else -> [1, num_rows)."""
    if num_rows < 2:
        raise ValueError(f"a hashed table needs num_rows >= 2 (row 0 is 'missing'), got {num_rows}")
    arr = np.asarray(values, dtype=np.str_).reshape(-1)
    h = _splitmix64(fnv1a64(arr))
    ids = (h % np.uint64(num_rows - 1)).astype(np.int64) + 1
    ids[np.char.str_len(arr) == 0] = MISSING_ROW
    return ids
