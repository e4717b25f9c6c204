"""LiveGroup: the training kernel's fused step over the tables of one (rank, scale).

The LiveTrainer trains all tables of one (rank, scale) as one LiveGroup, so a step costs a fixed
number of torch ops instead of ~50 small ops per table: per group three calls into the training
kernel (dlrm_core/_training_kernel.c): the forward (each bag's A rows summed, @ B), the backward
(A's gradient per key, B's, the rank controllers' gradient statistics, all in one pass over the
bags) and the step (row-wise Adagrad on A's rows, Adam on B). The math (row-wise Adagrad, Adam)
is the per-table module's, shared through factor_optim. The group's rows of A and its stacked
B, b_m, b_v (T, r, D) are laid out, filled and kept in step with the tables by LiveGroups
(group_layout.py).

Shapes: B batch, T tables in the group, U_g distinct keys of the group in a batch, r rank, D dim.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dlrm_core.factor_optim import ADAGRAD_EPS, ADAM_BETAS, ADAM_EPS
from dlrm_core.kernel import training_kernel
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.rank import RankController, observe_grams

if TYPE_CHECKING:
    from dlrm_core._training_kernel import BagsSpec


class LiveGroup:
    """A and B of the tables of one rank (and scale): their forward and optimizer step."""

    def __init__(self, lives: list[LiveEmbedding], features: list[int], row0: int, rows: int):
        self.rank, self.dim, self.scale = lives[0].rank, lives[0].dim, lives[0].scale
        self.size = len(lives)
        self.lives = lives
        self.feature_index = torch.tensor(features, dtype=torch.int64)
        self.row0, self.rows = row0, rows  # its rows in the LiveGroups buffers
        self.a = torch.zeros(rows, self.rank)
        self.b = torch.stack([live.B.detach() for live in lives])
        self.b_m = torch.stack([live.b_m for live in lives])
        self.b_v = torch.stack([live.b_v for live in lives])
        self.controllers: list[RankController] = []  # set by LiveGroups, one per table
        # this step's rows (U_g,), value indices, bags and weights; the (T * B, r) pooled A
        # rows and an alias of b, the leaves autograd fills
        # this step's kernel inputs; from the backward: A's gradient per key (U_g, r), B's
        # (T, r, D), the output gradients' Gram matrices (T, D, D) and whether all are finite
        self._trained: _KernelBags | None = None
        self._row_grad: torch.Tensor | None = None
        self._b_grad: torch.Tensor | None = None
        self._grams: torch.Tensor | None = None
        self._finite: bool | None = None

    def pooled(
        self,
        pos: torch.Tensor,
        hit: torch.Tensor,
        index: torch.Tensor,
        offsets: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        """(T, B, D) summed deltas of each bag of the group's tables, given the group's rows
        ``pos`` (U_g,) of its keys and ``hit`` (U_g,), each value's key ``index`` (nnz_g,) and
        the bags' starts ``offsets`` (T * B,); with grad enabled, the next ``step`` trains the
        A rows looked up and every B."""
        inputs = _KernelBags(self, pos, hit, index, offsets, batch_size)
        if not torch.is_grad_enabled():
            return self._forward(inputs, keep_sums=False)
        self._trained = inputs
        return _Correction.apply(self.b.detach().requires_grad_(True), self)

    def _forward(self, inputs: _KernelBags, keep_sums: bool) -> torch.Tensor:
        """The kernel's forward: the (T, B, D) deltas, and with ``keep_sums`` each bag's sum
        of A rows (for B's gradient) in ``inputs.sums``."""
        delta = torch.empty(self.size, inputs.batch_size, self.dim)
        training_kernel.lora_forward(
            inputs.spec,
            self.a.data_ptr(),
            self.b.data_ptr(),
            delta.data_ptr(),
            inputs.sums.data_ptr() if keep_sums else 0,
        )
        return delta

    def _backward(self, grad: torch.Tensor) -> torch.Tensor:
        """From the deltas' gradient (T, B, D): A's gradient per key, the rank controllers'
        Gram matrices (T, D, D) and whether it is all finite, kept for ``step``; returns B's
        gradient (T, r, D)."""
        inputs = self._trained
        assert inputs is not None
        if grad.stride(2) != 1:
            grad = grad.contiguous()
        self._row_grad = torch.empty(inputs.keys, self.rank)
        self._b_grad = b_grad = torch.empty(self.size, self.rank, self.dim)
        self._grams = torch.empty(self.size, self.dim, self.dim)
        self._finite = training_kernel.lora_backward(
            inputs.spec,
            self.b.data_ptr(),
            grad.data_ptr(),
            grad.stride(0),
            grad.stride(1),
            inputs.sums.data_ptr(),
            self._row_grad.data_ptr(),
            b_grad.data_ptr(),
            self._grams.data_ptr(),
        )
        return b_grad

    def grads_finite(self) -> bool:
        """This step's gradients are finite (True when there are none)."""
        return self._finite is not False

    def step(self, a_accum: torch.Tensor, lr_a: float, lr_b: float) -> None:
        """LiveEmbedding.step of every table with active rows (``a_accum``: the group's rows
        of the accumulators), then feed the gradient statistics to their rank controllers, in
        one kernel call. Tables without active rows are not in the graph of the per-table
        forward, so they neither step B nor observe gradients here."""
        inputs, grams = self._trained, self._grams
        if inputs is None or grams is None or self._row_grad is None or self._b_grad is None:
            self.drop_grads()
            return
        if (
            a_accum.dtype != torch.float32
            or not a_accum.is_contiguous()
            or len(a_accum) != self.rows
        ):
            raise TypeError(f"a_accum must be {self.rows} contiguous float32 accumulators")
        active = [t for t, live in enumerate(self.lives) if live.num_active]
        for t in active:
            self.lives[t].b_steps += 1
        steps = tuple(
            self.lives[t].b_steps if self.lives[t].num_active else 0 for t in range(self.size)
        )
        training_kernel.lora_step(
            inputs.spec,
            self.a.data_ptr(),
            a_accum.data_ptr(),
            self._row_grad.data_ptr(),
            lr_a,
            ADAGRAD_EPS,
            self.b.data_ptr(),
            self._b_grad.data_ptr(),
            self.b_m.data_ptr(),
            self.b_v.data_ptr(),
            steps,
            lr_b,
            *ADAM_BETAS,
            ADAM_EPS,
        )
        observe_grams(
            [self.controllers[t] for t in active],
            grams if len(active) == self.size else grams[active],
        )
        self.drop_grads()

    def drop_grads(self) -> None:
        self._trained = self._row_grad = self._b_grad = self._grams = self._finite = None


class _KernelBags:
    """A group's step inputs as the training kernel takes them (the tensors kept alive while
    the kernel holds their pointers), and the (T * B, r) sums of A rows per bag."""

    def __init__(
        self,
        group: LiveGroup,
        pos: torch.Tensor,
        hit: torch.Tensor,
        index: torch.Tensor,
        offsets: torch.Tensor,
        batch_size: int,
    ) -> None:
        for buffer in (group.a, group.b, group.b_m, group.b_v):
            if buffer.dtype != torch.float32 or not buffer.is_contiguous():
                raise TypeError("the training kernel takes contiguous float32 factors")
        if offsets.numel() != group.size * batch_size:
            raise ValueError(f"offsets: {offsets.numel()} bags, expected {group.size * batch_size}")
        self.tensors = pos, hit, index, offsets = (
            pos.to(torch.int64).contiguous(),
            hit.to(torch.bool).contiguous(),
            index.to(torch.int64).contiguous(),
            offsets.to(torch.int64).contiguous(),
        )
        self.keys, self.batch_size = pos.numel(), batch_size
        self.sums = torch.empty(offsets.numel(), group.rank)
        self.spec: BagsSpec = (
            pos.data_ptr(),
            hit.data_ptr(),
            index.data_ptr(),
            offsets.data_ptr(),
            index.numel(),
            self.keys,
            group.rows,
            group.size,
            batch_size,
            group.rank,
            group.dim,
            float(group.scale),
        )


class _Correction(torch.autograd.Function):
    """A group's deltas through the training kernel. Its input is a leaf alias of the stacked
    B, whose gradient the backward returns; A's gradient stays with the group (see step)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, group: LiveGroup) -> torch.Tensor:  # type: ignore[override]
        assert group._trained is not None
        ctx.group = group
        return group._forward(group._trained, keep_sums=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.group._backward(grad), None
