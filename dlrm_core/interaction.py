"""The DLRM's pairwise dot interaction, (B, D), (B, F, D) -> (B, D + (F + 1) * F / 2): the
dense vector followed by the dots of [dense, sparse_1..sparse_F], strictly upper triangle.

float32 on the CPU runs the C kernel (dlrm_core/_interaction_kernel.c), forward and backward,
with the GIL released. At the Criteo reference's 26 features and batch 512 (one thread, thread
CPU under load) the torch ops take ~1.37 ms for forward + backward, most of it index_select's
backward (a scatter into the (F + 1)^2 dot matrix); the kernel ~0.78 ms (forward 0.29 against
0.36 ms). At 2 to 8 features it is 2-4x cheaper. Other dtypes and devices take the torch ops.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.autograd.function import once_differentiable

from dlrm_core.kernel import interaction_kernel


def pair_index(num_features: int) -> torch.Tensor:
    """The flat indices of the strict upper triangle of the (F + 1) x (F + 1) dot matrix."""
    rows, cols = torch.triu_indices(num_features + 1, num_features + 1, offset=1)
    return rows * (num_features + 1) + cols


def torch_interaction(
    dense: torch.Tensor, sparse: torch.Tensor, pairs: torch.Tensor
) -> torch.Tensor:
    """The interaction in torch ops; ``pairs`` = pair_index(F) (index_select beats 2-d indexing)."""
    stacked = torch.cat([dense.unsqueeze(1), sparse], dim=1)  # (B, F + 1, D)
    dots = torch.bmm(stacked, stacked.transpose(1, 2))  # (B, F + 1, F + 1)
    return torch.cat([dense, dots.flatten(1).index_select(1, pairs)], dim=1)


def uses_kernel(dense: torch.Tensor, sparse: torch.Tensor) -> bool:
    """Whether dot_interaction runs the C kernel on these inputs."""
    return all(t.dtype == torch.float32 and t.device.type == "cpu" for t in (dense, sparse))


def dot_interaction(dense: torch.Tensor, sparse: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """The interaction of dense (B, D) and sparse (B, F, D); ``pairs`` = pair_index(F)."""
    batch, features, dim = sparse.shape
    if dense.shape != (batch, dim):
        raise ValueError(f"dense {tuple(dense.shape)} and sparse {tuple(sparse.shape)} differ")
    if not uses_kernel(dense, sparse):
        return torch_interaction(dense, sparse, pairs)
    out: torch.Tensor = _KernelInteraction.apply(dense.contiguous(), sparse.contiguous())
    return out


class _KernelInteraction(torch.autograd.Function):
    """The C kernel's forward and backward; inputs contiguous float32 on the CPU."""

    @staticmethod
    def forward(ctx: Any, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(dense, sparse)
        return kernel_forward(dense, sparse)

    @staticmethod
    @once_differentiable  # the kernel's gradients are not differentiable again: say so
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        dense, sparse = ctx.saved_tensors
        return kernel_backward(dense, sparse, grad, dense_grad=ctx.needs_input_grad[0])


def kernel_forward(dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """The C kernel's forward, outside autograd; inputs contiguous float32 on the CPU
    (uses_kernel)."""
    batch, features, dim = sparse.shape
    out = torch.empty(batch, dim + (features + 1) * features // 2)
    interaction_kernel.forward(
        dense.data_ptr(), sparse.data_ptr(), out.data_ptr(), batch, features, dim
    )
    return out


def kernel_backward(
    dense: torch.Tensor, sparse: torch.Tensor, grad: torch.Tensor, dense_grad: bool = True
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The C kernel's gradients of dense and sparse from the output's ``grad``, outside
    autograd (the frozen head's pass, frozen_head.py, calls it directly). Without
    ``dense_grad`` dense's gradient is None, not computed: a frozen bottom MLP's kept output
    needs none (at 8 features the backward then takes two thirds of the tiles)."""
    grad = grad.to(torch.float32).contiguous()
    grad_dense = torch.empty_like(dense) if dense_grad else None
    grad_sparse = torch.empty_like(sparse)
    batch, features, dim = sparse.shape
    interaction_kernel.backward(
        dense.data_ptr(),
        sparse.data_ptr(),
        grad.data_ptr(),
        0 if grad_dense is None else grad_dense.data_ptr(),
        grad_sparse.data_ptr(),
        batch,
        features,
        dim,
    )
    return grad_dense, grad_sparse
