"""Fine-tuning of the top MLP's last layer(s) on the node, beside the embedding correction.

The correction moves the pooled embeddings; the layers above them were trained on the base's
distribution and drift with the stream as much as the tables do (measured on the 2M-event
stream: shipping the cluster's MLPs alone recovers most of LiveUpdate's gap to delta sync). A
node that is not sent MLPs can follow part of that drift itself by training the last
``layers`` linear layers of the top MLP at a small learning rate. Their weights are part of
the served model (no copy); what tuning adds is their gradients and Adagrad's accumulators,
which the trainer's memory account counts (``nbytes``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dlrm_core.model import DLRM


class TopLayerTuner:
    """Adagrad on the last ``layers`` nn.Linear modules of ``model``'s top MLP."""

    def __init__(self, model: DLRM, layers: int, lr: float) -> None:
        linears = [m for m in model.over_arch.mlp if isinstance(m, nn.Linear)]
        if not 1 <= layers <= len(linears):
            raise ValueError(f"layers must be in [1, {len(linears)}], got {layers}")
        if not (math.isfinite(lr) and 0 < lr <= 10):
            raise ValueError(f"lr must be in (0, 10], got {lr}")
        self.params = [p for m in linears[-layers:] for p in m.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        self.optimizer = torch.optim.Adagrad(self.params, lr=lr)

    def grads_finite(self) -> bool:
        return all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in self.params)

    def step(self) -> None:
        self.optimizer.step()
        self.drop_grads()

    def drop_grads(self) -> None:
        self.optimizer.zero_grad(set_to_none=False)  # keep the buffers: no churn per step

    @property
    def nbytes(self) -> int:
        """Bytes tuning holds beyond the served weights: gradients and accumulators."""
        grads = sum(p.grad.nbytes for p in self.params if p.grad is not None)
        state = sum(
            t.nbytes
            for s in self.optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        )
        return grads + state
