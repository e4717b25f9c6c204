"""The frozen head's pass, by hand: a LiveTrainer whose top MLP does not train (no lr_top) needs
from the interaction and the top MLP only the gradient of the pooled embeddings, and that takes
a handful of matrix products. Through autograd the same pass costs its graph as well: on the
MovieLens-100k model (batch 512, 8 features of width 16, top MLP 52-64-32-1) ~0.57 ms for the
forward and backward against ~0.4 ms by hand. The ops are the ones autograd runs (F.linear;
Linear's input gradient grad @ W, ReLU's threshold_backward, BCE-with-logits' (sigmoid(z) - y) /
N, the interaction kernel's backward), in the same order, so the gradients are the same bits
(tests/unit/test_frozen_head.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlrm_core.interaction import kernel_backward, kernel_forward, uses_kernel
from dlrm_core.model import DLRM


@dataclass(frozen=True)
class HeadPass:
    loss: float
    grad_pooled: torch.Tensor | None  # (B, F, D); None when the loss is not finite


class FrozenHead:
    """The interaction and top MLP of ``model`` run forward and back outside autograd."""

    def __init__(self, model: DLRM) -> None:
        self.layers = list(model.over_arch.mlp)
        self.modules = [model.inter_arch, model.over_arch, model.over_arch.mlp, *self.layers]

    @staticmethod
    def of(model: DLRM) -> FrozenHead | None:
        """The model's head, if its top MLP is the plain Linear / ReLU stack of model._mlp."""
        layers = list(model.over_arch.mlp)
        plain = all(type(layer) in (nn.Linear, nn.ReLU) for layer in layers)
        return FrozenHead(model) if plain and layers and type(layers[-1]) is nn.Linear else None

    def applies(self, bottom: torch.Tensor, pooled: torch.Tensor) -> bool:
        """Whether these inputs take the interaction kernel (float32 on the CPU) and no module
        of the head carries a hook (the pass by hand would not run it)."""
        return uses_kernel(bottom, pooled) and not _hooked(self.modules)

    @torch.no_grad()
    def run(self, bottom: torch.Tensor, pooled: torch.Tensor, labels: torch.Tensor) -> HeadPass:
        """The mean BCE loss of the logits of (``bottom`` (B, D), ``pooled`` (B, F, D)) against
        ``labels`` (B,), and its gradient with respect to ``pooled``."""
        bottom, pooled = bottom.contiguous(), pooled.contiguous()
        outputs = [kernel_forward(bottom, pooled)]
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                outputs.append(F.linear(outputs[-1], layer.weight, layer.bias))
            else:
                outputs.append(torch.relu_(outputs[-1]))  # its input is kept by no one
        logits = outputs[-1].squeeze(1)
        value = float(F.binary_cross_entropy_with_logits(logits, labels))
        if not math.isfinite(value):
            return HeadPass(value, None)
        grad = (torch.sigmoid(logits) - labels).div_(logits.numel()).unsqueeze(1)
        for layer, out in zip(reversed(self.layers), reversed(outputs[1:]), strict=True):
            if isinstance(layer, nn.Linear):
                grad = grad.mm(layer.weight)
            else:
                grad = torch.ops.aten.threshold_backward(grad, out, 0)
        return HeadPass(value, kernel_backward(bottom, pooled, grad, dense_grad=False)[1])


def _hooked(modules: list[nn.Module]) -> bool:
    """Whether a hook would run on any of ``modules``: a global module hook or one of theirs."""
    glob = nn.modules.module
    if (
        glob._global_forward_hooks
        or glob._global_forward_pre_hooks
        or glob._global_backward_hooks
        or glob._global_backward_pre_hooks
    ):
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in modules
    )
