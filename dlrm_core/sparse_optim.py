"""The cluster's optimizer on its embedding rows, fused into one kernel call per step.

torch's path for a DLRM with sparse embedding gradients costs, per table and step, an
EmbeddingBag backward that materialises a sparse (nnz, D) gradient, a coalesce (sort + sum of
the duplicates), and torch.optim's sparse SGD or Adagrad (~6 ops over the rows, each allocating
its output): ~10 ops per table, 26 tables. A production cluster fuses the optimizer into the
embedding backward (FBGEMM's table-batched embeddings); so does this one: the pooled
embeddings' gradient (B, F, D) goes to the training kernel once per step, which sums each
distinct row's gradient over its bags, checks it is finite, and applies exactly torch.optim.SGD's
or torch.optim.Adagrad's sparse update (lr_decay 0, no weight decay, initial accumulator 0, eps
1e-10, element-wise accumulators) to the row: one pass over each table's distinct rows.

Shapes: B batch, F tables, D dim, U distinct (table, row) pairs of the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.kernel import training_kernel

ADAGRAD_EPS = 1e-10  # torch.optim.Adagrad's default


class SparseRowOptimizer:
    """SGD or Adagrad (``optimizer``) with learning rate ``lr`` on the rows of ``tables``
    (F embedding weights (N_f, D), float32, contiguous) that a batch's ids touch."""

    def __init__(self, tables: Sequence[torch.Tensor], optimizer: str, lr: float) -> None:
        if optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {optimizer!r}")
        self.tables = list(tables)
        self.dim = int(self.tables[0].shape[1]) if self.tables else 0
        self._check()
        self.lr = lr
        # torch.optim.Adagrad's "sum" state, one accumulator per element
        self.state = [torch.zeros_like(t) for t in self.tables] if optimizer == "adagrad" else []
        rows = torch.tensor([int(t.shape[0]) for t in self.tables], dtype=torch.int64)
        self.key_offsets = torch.cumsum(rows, 0) - rows  # (F,) keys = id + key_offsets[f]
        self._key_offsets = self.key_offsets.tolist()

    def _check(self) -> None:
        for t in self.tables:
            if t.dtype != torch.float32 or not t.is_contiguous() or t.dim() != 2:
                raise TypeError("embedding tables must be contiguous float32 (N, D)")
            if t.shape[1] != self.dim:
                raise ValueError(f"embedding tables must all be {self.dim} wide")

    def step(
        self, batch: SparseBatch, grad: torch.Tensor
    ) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Apply the step for the pooled embeddings' gradient ``grad`` (B, F, D). Returns per
        table (ids (m,), each row's gradient L2 norm (m,)) of the rows it changed, or None
        (nothing changed) when a row's gradient is not finite. Ids must be in range (the
        forward that produced ``grad`` checked them)."""
        self._check()
        features = len(self.tables)
        if len(batch.values) != features or grad.shape != (batch.batch_size, features, self.dim):
            raise ValueError(f"grad must be (B, F, D), got {tuple(grad.shape)}")
        grad = grad.to(torch.float32).contiguous()
        keys = torch.cat([v + off for v, off in zip(batch.values, self._key_offsets, strict=True)])
        uniq, inverse = torch.unique(keys, return_inverse=True)
        bounds = torch.searchsorted(uniq, self.key_offsets).tolist() + [uniq.numel()]
        sizes = [v.numel() for v in batch.values]
        first_value = [sum(sizes[:f]) for f in range(features)]
        specs = tuple(
            (
                table.data_ptr(),
                self.state[f].data_ptr() if self.state else 0,
                int(table.shape[0]),
                batch.offsets[f].data_ptr(),
                first_value[f],
                sizes[f],
                bounds[f],
                bounds[f + 1],
                self._key_offsets[f],
            )
            for f, table in enumerate(self.tables)
        )
        row_grad = torch.empty(uniq.numel(), self.dim)
        norms = torch.empty(uniq.numel())
        finite = training_kernel.sparse_step(
            specs,
            uniq.data_ptr(),
            uniq.numel(),
            inverse.data_ptr(),
            grad.data_ptr(),
            batch.batch_size,
            self.dim,
            self.lr,
            ADAGRAD_EPS,
            row_grad.data_ptr(),
            norms.data_ptr(),
        )
        if not finite:
            return None
        return [
            (
                uniq[bounds[f] : bounds[f + 1]] - self.key_offsets[f],
                norms[bounds[f] : bounds[f + 1]],
            )
            for f in range(features)
        ]
