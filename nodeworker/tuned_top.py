"""The node's tuning of its top MLP (issue 14 item 4): the trainer process runs Adagrad on the
top MLP's last ``top_layers`` linear layers at ``lr_top`` (the policy's fields; dlrm_core's
TopLayerTuner does the steps), publishes their weights with its factor versions (each version's
FoldedRows carries them, so the version installer writes them into inference's model with the
version, under the patch-ordering and epoch rules) and counts them in the node's budget.

What tuning holds beyond the model both processes load anyway: the gradients and Adagrad's
accumulators of the tuned layers in the trainer, and the published copy, in the patch pipe and
the installer's queue until its version is installed (inference copies it into the weights it
already has: no further copy). ``tuning_bytes`` plans those three copies and the optimizer's
step counters; the node's budget takes them out of its pool first (node_budget). Tuning that
would hold more than MAX_BUDGET_SHARE of the budget is refused by the node's apply_policy
(``tuning_error``) and left off by a trainer that starts on such a policy (``fitting``).

A delta rebase's MLPs replace the tuned weights (dlrm_core.rebase writes every MLP parameter)
and ``rebased`` drops their accumulators. Snapshots keep the layers tuned on the checkpoint's
MLPs, and a restore serves them again; after a delta rebase they keep none, as they keep
neither its rows nor its MLPs. Turning tuning off keeps the weights as tuned until a rebase or
restore brings others.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, TypedDict

import numpy as np
import torch

from dlrm_core.model import DLRMConfig
from dlrm_core.top_tune import TopLayerTuner
from nodeworker import protocol

if TYPE_CHECKING:
    from dlrm_core.trainer import LiveTrainer

log = logging.getLogger(__name__)

# gradients, Adagrad's accumulators, the published copy waiting to be installed
TUNED_COPIES = 3
STEP_BYTES = 4  # Adagrad's step counter, one float32 per tuned parameter tensor
# tuning may hold at most this share of the node's budget; the rest stays the tables' (the
# Criteo reference's last two layers, 1.6 MB, are 47% of a 2% budget of 26 10^5-row tables)
MAX_BUDGET_SHARE = 0.25


def tuned_layers(config: DLRMConfig, policy: protocol.Policy) -> int:
    """The layers a node tunes: the policy's, at most its top MLP's (as r_max is at most D)."""
    return min(policy.top_layers, len(config.top_mlp))


def tuned_floats(config: DLRMConfig, layers: int) -> int:
    """Weights and biases of the top MLP's last ``layers`` linear layers."""
    widths = (config.interaction_dim, *config.top_mlp)
    pairs = zip(widths[-layers - 1 : -1], widths[-layers:], strict=True)
    return sum(i * o + o for i, o in pairs)


def tuning_bytes(config: DLRMConfig, policy: protocol.Policy) -> int:
    """What tuning holds on a node under ``policy`` (0: off), for the budget."""
    if policy.lr_top == 0:
        return 0
    layers = tuned_layers(config, policy)
    return TUNED_COPIES * 4 * tuned_floats(config, layers) + STEP_BYTES * 2 * layers


def tuning_error(config: DLRMConfig, policy: protocol.Policy) -> str | None:
    """Why the node cannot tune as ``policy`` says within its budget (None: it can)."""
    need = tuning_bytes(config, policy)
    total = sum(config.table_sizes) * config.embedding_dim * 4 * policy.memory_budget_pct / 100
    if need <= MAX_BUDGET_SHARE * total:
        return None
    return (
        f"tuning the top MLP's last {tuned_layers(config, policy)} layer(s) holds {need} "
        f"bytes, more than {MAX_BUDGET_SHARE:.0%} of the node's budget ({int(total)} bytes)"
    )


def fitting(config: DLRMConfig, policy: protocol.Policy) -> protocol.Policy:
    """``policy``, without tuning if its tuning does not fit (a node starting on such a
    policy, from its command line or its saved state, runs without it and says why)."""
    error = tuning_error(config, policy)
    if error is None:
        return policy
    log.warning("the top MLP is not tuned: %s", error)
    return replace(policy, lr_top=0.0)


class TopFields(TypedDict):
    lr_top: float
    top_layers: int


def trainer_fields(config: DLRMConfig, policy: protocol.Policy) -> TopFields:
    """TrainerConfig's fields for the top MLP's tuning under ``policy``."""
    return {"lr_top": policy.lr_top, "top_layers": tuned_layers(config, policy)}


class TopTuning:
    """The trainer process's side: LiveTrainer.top as the policy in force sets it, and the
    weights each version publishes."""

    def __init__(self, trainer: LiveTrainer) -> None:
        self.trainer = trainer
        self.config = trainer.model.config
        self._names = {id(p): n for n, p in trainer.model.named_parameters()}
        self.sent_bytes = 0  # the last published copy (the installer holds it until installed)
        # the parameters tuned on the checkpoint's MLPs: what a snapshot keeps (none after a
        # delta rebase: a restore goes back to the checkpoint's MLPs, see rebased)
        self.touched: set[str] = set()
        self.on_checkpoint = True
        self._loaded: dict[str, np.ndarray] = {}  # a snapshot's, published once

    def apply(self, policy: protocol.Policy) -> None:
        """Start, retune, change or stop tuning as ``policy`` says; the accumulators are kept
        when only the learning rate changes."""
        top = self.trainer.top
        layers = tuned_layers(self.config, policy)
        if top is not None and policy.lr_top > 0 and len(top.params) == 2 * layers:
            for group in top.optimizer.param_groups:
                group["lr"] = policy.lr_top
            return
        self._freeze()
        if policy.lr_top > 0:
            self.trainer.top = TopLayerTuner(self.trainer.model, layers, policy.lr_top)

    def rebased(self) -> None:
        """A delta rebase's MLPs replaced the tuned layers: forget the accumulators built on
        the old weights. What is tuned from here on is tuned on the cluster's MLPs, which a
        restore does not bring back (they go with the rebased rows): snapshots keep none."""
        self.touched.clear()
        self.on_checkpoint = False
        self._fresh_optimizer()

    def _fresh_optimizer(self) -> None:
        top = self.trainer.top
        if top is not None:
            lr = float(top.optimizer.param_groups[0]["lr"])
            self.trainer.top = TopLayerTuner(self.trainer.model, len(top.params) // 2, lr)

    def _freeze(self) -> None:
        top = self.trainer.top
        if top is not None:
            for p in top.params:
                p.requires_grad_(False)
                p.grad = None
        self.trainer.top = None

    def published(self) -> dict[str, np.ndarray]:
        """A copy of the tuned weights by parameter name, for the next version ({}: off)."""
        top = self.trainer.top
        params = top.params if top is not None else []
        out = self._loaded | {self._names[id(p)]: p.detach().numpy().copy() for p in params}
        self._loaded = {}
        if self.on_checkpoint:
            self.touched.update(out)
        self.sent_bytes = sum(a.nbytes for a in out.values())
        return out

    def kept(self) -> dict[str, np.ndarray]:
        """The weights tuned on the checkpoint's MLPs and published, as they are now."""
        params = dict(self.trainer.model.named_parameters())
        return {name: params[name].detach().numpy().copy() for name in sorted(self.touched)}

    def load(self, weights: dict[str, np.ndarray]) -> None:
        """A snapshot's tuned weights into the trainer's model (their accumulators start
        afresh); the next version publishes them."""
        params = dict(self.trainer.model.named_parameters())
        with torch.no_grad():
            for name, value in weights.items():
                params[name].copy_(torch.from_numpy(value))
        self._fresh_optimizer()
        self._loaded = dict(weights)
