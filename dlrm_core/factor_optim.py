"""In-place optimizer steps for LiveEmbedding factors.

A (n, r) gets row-wise Adagrad (one accumulator per active row, touching only the rows in the
sparse gradient); B (r, D) gets Adam. The state tensors live in the LiveEmbedding next to the
factors, because they must be permuted and compacted together with A's rows.
"""

from __future__ import annotations

import torch

ADAGRAD_EPS = 1e-8
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


def rowwise_adagrad_(
    param: torch.Tensor,
    accum: torch.Tensor,
    grad: torch.Tensor,
    lr: float,
    eps: float = ADAGRAD_EPS,
) -> None:
    """param (n, r), accum (n,), grad sparse COO (n, r) or dense (n, r)."""
    if grad.is_sparse:
        g = grad.coalesce()
        idx, vals = g.indices()[0], g.values()
    else:
        idx = torch.nonzero(grad.abs().sum(1)).squeeze(1)
        vals = grad[idx]
    rowwise_adagrad_rows_(param, accum, idx, vals, lr, eps)


def rowwise_adagrad_rows_(
    param: torch.Tensor,
    accum: torch.Tensor,
    rows: torch.Tensor,
    grad_rows: torch.Tensor,
    lr: float,
    eps: float = ADAGRAD_EPS,
) -> None:
    """Row-wise Adagrad on the rows ``rows`` (m,) of param (n, r) with their gradients (m, r).
    A row may repeat when all but one of its copies have a zero gradient."""
    if rows.numel() == 0:
        return
    accum.index_add_(0, rows, grad_rows.pow(2).mean(1))
    step = grad_rows / (accum.index_select(0, rows).sqrt() + eps).unsqueeze(1)
    param.index_put_((rows,), step.mul_(-lr), accumulate=True)  # index_add_ is slow on rows


def adam_(
    param: torch.Tensor,
    grad: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    step: int | torch.Tensor,
    lr: float,
    betas: tuple[float, float] = ADAM_BETAS,
    eps: float = ADAM_EPS,
) -> None:
    """Dense Adam on param (r, D), or on T stacked ones (T, r, D) with ``step`` (T, 1, 1);
    ``step`` counts from 1."""
    b1, b2 = betas
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    m_hat = m / (1 - b1**step)
    v_hat = v / (1 - b2**step)
    param.addcdiv_(m_hat, v_hat.sqrt_().add_(eps), value=-lr)
