"""A rank controller's gradient Gram G = sum of g^T g over the output gradients g (rows of D)
seen since its last adaptation, held packed: G is symmetric, so only its upper triangle,
row-major, D (D + 1) / 2 floats (544 bytes at D = 16 instead of 1,024 for the (D, D) matrix).
The fused trainer's kernel adds each step's triangle in place (dlrm_core/_training_kernel.c
lora_step); the spectral consumers (factor_spectrum.py, rank_choice.py) take the (D, D) matrix
``full`` unpacks, a temporary of the adaptation, not held between steps.
"""

from __future__ import annotations

import functools

import torch

_F32 = 4


def packed_size(dim: int) -> int:
    """Floats of a packed (dim, dim) symmetric matrix: its upper triangle."""
    return dim * (dim + 1) // 2


def packed_bytes(dim: int) -> int:
    """Bytes of a packed float32 Gram of ``dim`` (row_budget.gram_bytes)."""
    return _F32 * packed_size(dim)


@functools.lru_cache(maxsize=8)
def _upper(dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, cols) of the upper triangle, row-major: the packed order the kernel writes."""
    rows, cols = torch.triu_indices(dim, dim)
    return rows, cols


class PackedGram:
    """The upper triangle of a (D, D) float32 Gram, accumulated in place."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self.packed = torch.zeros(packed_size(dim))

    @property
    def nbytes(self) -> int:
        return self.packed.numel() * self.packed.element_size()

    def add(self, gram: torch.Tensor) -> None:
        """Add a symmetric (D, D) Gram (its upper triangle is read)."""
        rows, cols = _upper(self.dim)
        self.packed += gram[rows, cols]

    def full(self) -> torch.Tensor:
        """The (D, D) symmetric matrix (a new tensor)."""
        rows, cols = _upper(self.dim)
        out = torch.zeros(self.dim, self.dim)
        out[rows, cols] = self.packed
        out[cols, rows] = self.packed
        return out

    def trace(self) -> float:
        rows, cols = _upper(self.dim)
        return float(self.packed[rows == cols].sum())

    def reset(self) -> None:
        self.packed.zero_()

    def pointer(self) -> int:
        """Where the kernel adds each step's packed triangle (lora_step's observers)."""
        if self.packed.dtype != torch.float32 or not self.packed.is_contiguous():
            raise TypeError("the packed Gram must be contiguous float32")
        return self.packed.data_ptr()
