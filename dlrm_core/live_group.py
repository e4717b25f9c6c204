"""LiveGroup and Correction: the training kernel's fused step over all of a trainer's tables.

The LiveTrainer trains the tables of one (rank, scale) as one LiveGroup (its rows of A and its
stacked B, b_m, b_v (T, r, D)), and all its groups at once: a step costs three calls into the
training kernel (dlrm_core/_training_kernel.c), whatever the number of groups: the forward
(each bag's A rows summed, @ B, added into the pooled embeddings in place), the backward (A's
gradient per key, B's, the rank controllers' gradient statistics, all in one pass over the
bags) and the step (row-wise Adagrad on A's rows, Adam on B). One call per group and phase cost
~0.2 ms of Python a group and step on the Criteo reference (five groups of ranks 1-6), more than
the kernel's work. The math (row-wise Adagrad, Adam) is the per-table module's, shared through
factor_optim. The groups' rows of A and their stacked B, b_m, b_v are laid out, filled and kept
in step with the tables by LiveGroups (group_layout.py).

Shapes: B batch, F the model's features, M trained tables (members), T tables in a group, U
distinct keys in a batch, r rank, D dim.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from dlrm_core.factor_optim import ADAGRAD_EPS, ADAM_BETAS, ADAM_EPS
from dlrm_core.kernel import training_kernel
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.rank import RankController

if TYPE_CHECKING:
    from dlrm_core._training_kernel import BatchSpec, GroupSpec


class LiveGroup:
    """A and B of the tables of one rank (and scale): the buffers the kernel trains. Its
    tables are members [member0, member0 + size) of the trainer's, its rows [row0, row0 + rows)
    of the trainer's row buffers."""

    def __init__(self, lives: list[LiveEmbedding], member0: int, row0: int, rows: int) -> None:
        self.rank, self.dim, self.scale = lives[0].rank, lives[0].dim, lives[0].scale
        self.size = len(lives)
        self.lives = lives
        self.member0, self.row0, self.rows = member0, row0, rows
        self.a = torch.zeros(rows, self.rank)
        self.b = torch.stack([live.B.detach() for live in lives])
        self.b_m = torch.stack([live.b_m for live in lives])
        self.b_v = torch.stack([live.b_v for live in lives])
        for buffer in (self.a, self.b, self.b_m, self.b_v):  # filled in place from now on
            if buffer.dtype != torch.float32 or not buffer.is_contiguous():
                raise TypeError("the training kernel takes contiguous float32 factors")
        self._layout = (
            member0,
            member0 + self.size,
            row0,
            rows,
            self.rank,
            float(self.scale),
            self.a.data_ptr(),
            self.b.data_ptr(),
            self.b_m.data_ptr(),
            self.b_v.data_ptr(),
        )

    def spec(self, key0: int, key1: int) -> GroupSpec:
        """The group as the kernel takes it, its keys this step being [key0, key1)."""
        return (key0, key1, *self._layout)


class Correction:
    """One batch's correction over all the groups: the kernel's inputs (the tensors kept alive
    while the kernel holds their pointers) and, under grad, the gradients its backward leaves
    for ``step``."""

    def __init__(
        self,
        groups: Sequence[LiveGroup],
        key_bounds: Sequence[int],
        pos: torch.Tensor,
        hit: torch.Tensor,
        index: torch.Tensor,
        offsets: torch.Tensor,
        features: torch.Tensor,
        batch_size: int,
        n_features: int,
    ) -> None:
        """``key_bounds`` (G + 1): each group's first key; ``pos``, ``hit`` (U,): each key's row
        in the trainer's buffers and whether it is active; ``index`` (nnz,): each value's key;
        ``offsets`` (M * B,): the bags' starts, member-major; ``features`` (M,): each member's
        column of the pooled embeddings (B, n_features, D)."""
        members = features.numel()
        if offsets.numel() != members * batch_size:
            raise ValueError(f"offsets: {offsets.numel()} bags, expected {members * batch_size}")
        self.groups = groups
        self.tensors = pos, hit, index, offsets, features = (
            pos.to(torch.int64).contiguous(),
            hit.to(torch.bool).contiguous(),
            index.to(torch.int64).contiguous(),
            offsets.to(torch.int64).contiguous(),
            features.to(torch.int64).contiguous(),
        )
        self.dim = groups[0].dim if groups else 1
        self.batch_size, self.n_features = batch_size, n_features
        self.batch: BatchSpec = (
            pos.data_ptr(),
            hit.data_ptr(),
            index.data_ptr(),
            offsets.data_ptr(),
            features.data_ptr(),
            index.numel(),
            pos.numel(),
            members,
            batch_size,
            self.dim,
            n_features,
        )
        self.specs = tuple(g.spec(key_bounds[i], key_bounds[i + 1]) for i, g in enumerate(groups))
        self.sizes = (
            sum(g.size * batch_size * g.rank for g in groups),  # the bags' sums of A rows
            sum((key_bounds[i + 1] - key_bounds[i]) * g.rank for i, g in enumerate(groups)),
            sum(g.size * g.rank * g.dim for g in groups),  # B's gradients
        )
        # from the backward: A's gradient per key, B's, the Gram matrices (M, D, D), finite
        self.sums: torch.Tensor | None = None
        self.row_grad: torch.Tensor | None = None
        self.b_grad: torch.Tensor | None = None
        self.grams: torch.Tensor | None = None
        self.finite: bool | None = None

    def add_to_(self, pooled: torch.Tensor, anchor: torch.Tensor | None) -> torch.Tensor:
        """Add every bag's delta into ``pooled`` (B, F, D) in place; under grad through an
        autograd function whose backward fills this correction's gradients (``anchor``: a leaf
        that requires grad, so the loss does; it gets none). Without an anchor the caller
        runs the backward itself (``backward``, the trainer's frozen head)."""
        shape = (self.batch_size, self.n_features, self.dim)
        if pooled.shape != shape or pooled.dtype != torch.float32 or not pooled.is_contiguous():
            raise TypeError(f"pooled must be contiguous float32 {shape}")
        if anchor is None:
            self._forward(pooled, keep_sums=True)
            return pooled
        if not torch.is_grad_enabled():
            self._forward(pooled, keep_sums=False)
            return pooled
        out: torch.Tensor = _Correction.apply(anchor, pooled, self)
        return out

    def _forward(self, pooled: torch.Tensor, keep_sums: bool) -> None:
        self.sums = torch.empty(self.sizes[0]) if keep_sums else None
        training_kernel.lora_forward(
            self.batch,
            self.specs,
            pooled.data_ptr(),
            self.sums.data_ptr() if self.sums is not None else 0,
            self.sizes[0],
        )

    def backward(self, grad: torch.Tensor) -> None:
        """From the pooled embeddings' gradient: A's gradient per key, B's, the Gram matrices
        and whether it is all finite, kept for ``step``."""
        if self.sums is None:
            raise RuntimeError("backward needs the forward under grad, or without an anchor")
        grad = grad.to(torch.float32).contiguous()
        self.row_grad = torch.empty(self.sizes[1])
        self.b_grad = torch.empty(self.sizes[2])
        self.grams = torch.empty(self.batch[7], self.dim, self.dim)
        self.finite = training_kernel.lora_backward(
            self.batch,
            self.specs,
            grad.data_ptr(),
            self.sums.data_ptr(),
            self.row_grad.data_ptr(),
            self.b_grad.data_ptr(),
            self.grams.data_ptr(),
            self.sizes,
        )

    def step(
        self,
        accum: torch.Tensor,
        lives: Sequence[LiveEmbedding],
        controllers: Sequence[RankController],
        lr_a: float,
        lr_b: float,
    ) -> None:
        """LiveEmbedding.step of every member with active rows (``lives``, ``controllers``: the
        members'; ``accum``: the buffers' Adagrad accumulators), then feed the gradient
        statistics to their rank controllers (RankController.observe_gram, in the kernel's
        call). Members without active rows are not in the graph
        of the per-table forward, so they neither step B nor observe gradients here. Nothing
        happens before the backward."""
        if self.row_grad is None or self.b_grad is None or self.grams is None:
            return
        if accum.dtype != torch.float32 or not accum.is_contiguous():
            raise TypeError("accum must be contiguous float32")
        steps, observers = [], []
        for live, controller in zip(lives, controllers, strict=True):
            if live.num_active:
                live.b_steps += 1
                steps.append(live.b_steps)
                observers.append(controller.gram_pointer())
            else:
                steps.append(0)
                observers.append(0)
        training_kernel.lora_step(
            self.batch,
            self.specs,
            accum.data_ptr(),
            accum.numel(),
            self.row_grad.data_ptr(),
            self.b_grad.data_ptr(),
            self.sizes[1:],
            self.grams.data_ptr(),
            tuple(steps),
            tuple(observers),
            lr_a,
            ADAGRAD_EPS,
            lr_b,
            *ADAM_BETAS,
            ADAM_EPS,
        )


class _Correction(torch.autograd.Function):
    """The groups' deltas added into the pooled embeddings in place, through the training
    kernel. Its inputs: a leaf that requires grad (the anchor: it gets no gradient) and the
    pooled embeddings (frozen tables: no gradient either); A's and B's gradients stay with the
    Correction (see step)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, anchor: torch.Tensor, pooled: torch.Tensor, correction: Correction
    ) -> torch.Tensor:
        ctx.correction = correction
        correction._forward(pooled, keep_sums=True)
        ctx.mark_dirty(pooled)
        return pooled

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[None, None, None]:  # type: ignore[override]
        ctx.correction.backward(grad)
        return None, None, None
