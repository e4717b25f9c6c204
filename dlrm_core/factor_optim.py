"""In-place optimizer steps for LiveEmbedding factors.

A (n, r) gets row-wise Adagrad (one accumulator per active row, touching only the rows in the
sparse gradient); B (r, D) gets Adam. The state tensors live in the LiveEmbedding next to the
factors, because they must be permuted and compacted together with A's rows.
"""

from __future__ import annotations

import torch


def rowwise_adagrad_(
    param: torch.Tensor, accum: torch.Tensor, grad: torch.Tensor, lr: float, eps: float = 1e-8
) -> None:
    """param (n, r), accum (n,), grad sparse COO (n, r) or dense (n, r)."""
    if grad.is_sparse:
        g = grad.coalesce()
        idx, vals = g.indices()[0], g.values()
    else:
        idx = torch.nonzero(grad.abs().sum(1)).squeeze(1)
        vals = grad[idx]
    if idx.numel() == 0:
        return
    accum.index_add_(0, idx, vals.pow(2).mean(1))
    step = vals / (accum[idx].sqrt() + eps).unsqueeze(1)
    param.index_add_(0, idx, step, alpha=-lr)


def adam_(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """Dense Adam on param (r, D); ``step`` counts from 1."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    param.addcdiv_(m_hat, v_hat.sqrt_().add_(eps), value=-lr)
