"""The cluster's trainer: full training of a plain DLRM with sparse embedding gradients (SGD or
Adagrad), for pretraining and the simulated training cluster. (The node's LoRA trainer is
trainer.LiveTrainer, which re-exports these names.)"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM
from dlrm_core.sparse_optim import SparseRowOptimizer


@dataclass(frozen=True)
class FullTrainConfig:
    optimizer: str = "sgd"  # "sgd" or "adagrad", for the MLPs and the embedding rows alike
    lr_dense: float = 0.1
    lr_sparse: float = 0.1  # on the embedding rows in the batch (sparse gradients)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adagrad"):
            raise ValueError(f"optimizer must be 'sgd' or 'adagrad', got {self.optimizer!r}")
        for name in ("lr_dense", "lr_sparse"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 <= value <= 100):
                raise ValueError(f"{name} must be in [0, 100], got {value}")


@dataclass(frozen=True)
class FullStepResult:
    loss: float
    skipped: bool
    # per table: (ids (m,), gradient L2 norm of each row (m,)) of the rows this step changed
    touched: Mapping[str, tuple[torch.Tensor, torch.Tensor]]


class FullSparseTrainer:
    """Full training of a plain DLRM with sparse embedding gradients (SGD or Adagrad):
    pretraining, and the simulated training cluster. The MLPs step with torch.optim; the
    embedding rows with the same optimizer fused into one kernel call from the pooled
    embeddings' gradient (sparse_optim.SparseRowOptimizer: torch.optim's math, one pass over
    the batch's distinct rows), so the cluster is optimised as hard as the node's trainer."""

    def __init__(self, model: DLRM, config: FullTrainConfig | None = None) -> None:
        self.model = model
        self.config = config = config or FullTrainConfig()
        opt = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adagrad
        self.dense_opt = opt(model.dense_parameters(), lr=config.lr_dense)
        self.sparse_opt = SparseRowOptimizer(
            [p.detach() for p in model.embedding_parameters()], config.optimizer, config.lr_sparse
        )
        self.skipped = 0

    def optimizer_state(self) -> dict[str, Any]:
        """A copy of both optimizers' state (Adagrad's accumulators; SGD keeps none): what
        another trainer of a copy of the model needs to continue where this one stopped."""
        return {
            "dense": copy.deepcopy(self.dense_opt.state_dict()),
            "sparse": [s.clone() for s in self.sparse_opt.state],
        }

    def load_optimizer_state(self, state: dict[str, Any]) -> None:
        """Continue from ``optimizer_state()`` of a trainer of the same shape and optimizer."""
        mine = self.sparse_opt.state
        if [s.shape for s in state["sparse"]] != [s.shape for s in mine]:
            raise ValueError("the optimizer state is for another model or optimizer")
        self.dense_opt.load_state_dict(copy.deepcopy(state["dense"]))
        for own, saved in zip(mine, state["sparse"], strict=True):
            own.copy_(saved)

    def step(self, batch: SparseBatch) -> FullStepResult:
        """One step on every parameter, or none (skipped) if the loss or a gradient is not
        finite."""
        self.dense_opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # the rows' gradients come from the pooled one, in the kernel
            pooled = self.model.sparse_arch(batch)
        pooled.requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(self.model.logits(batch, pooled), batch.labels)
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()
        dense = [p.grad for p in self.model.dense_parameters() if p.grad is not None]
        touched = None
        if math.isfinite(value) and all(bool(torch.isfinite(g).all()) for g in dense):
            assert pooled.grad is not None
            touched = self.sparse_opt.step(batch, pooled.grad)  # None: not finite, no change
        if touched is None:
            self.skipped += 1
            return FullStepResult(value, True, {})
        self.dense_opt.step()
        return FullStepResult(
            value, False, dict(zip(self.model.config.feature_names, touched, strict=True))
        )
