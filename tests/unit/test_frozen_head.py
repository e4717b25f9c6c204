"""The frozen head's pass by hand against autograd: the same loss and the same gradient bits,
and the trainer's step through it leaves the factors as the autograd step does."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from dlrm_core.frozen_head import FrozenHead
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
from dlrm_core.top_tune import TopLayerTuner
from dlrm_core.trainer import LiveTrainer, TrainerConfig


def _model(features: int, dim: int, top: tuple[int, ...], seed: int) -> DLRM:
    torch.manual_seed(seed)
    names = tuple(f"f{i}" for i in range(features))
    return DLRM(DLRMConfig(names, (50,) * features, 3, dim, (8, dim), top))


@pytest.mark.parametrize(
    ("features", "dim", "top", "batch"),
    [(1, 4, (1,), 1), (3, 8, (16, 1), 7), (8, 16, (64, 32, 1), 512), (5, 3, (9, 4, 2, 1), 33)],
)
def test_gradient_bits_equal_autograds(
    features: int, dim: int, top: tuple[int, ...], batch: int
) -> None:
    model = _model(features, dim, top, seed=features).requires_grad_(False)
    gen = torch.Generator().manual_seed(batch)
    bottom = torch.randn(batch, dim, generator=gen)
    pooled = torch.randn(batch, features, dim, generator=gen)
    labels = (torch.rand(batch, generator=gen) < 0.3).float()
    leaf = pooled.clone().requires_grad_(True)
    logits = model.over_arch(model.inter_arch(bottom, leaf))
    want = F.binary_cross_entropy_with_logits(logits, labels)
    want.backward()
    head = FrozenHead.of(model)
    assert head is not None and head.applies(bottom, pooled)
    got = head.run(bottom, pooled, labels)
    assert got.loss == float(want.detach())
    assert got.grad_pooled is not None and torch.equal(got.grad_pooled, leaf.grad)


def test_non_finite_loss_has_no_gradient() -> None:
    model = _model(2, 4, (4, 1), seed=0).requires_grad_(False)
    head = FrozenHead.of(model)
    assert head is not None
    pooled = torch.randn(3, 2, 4)
    pooled[1, 0, 0] = math.inf
    got = head.run(torch.randn(3, 4), pooled, torch.ones(3))
    assert not math.isfinite(got.loss) and got.grad_pooled is None


def test_a_head_other_than_linear_relu_takes_autograd() -> None:
    model = _model(2, 4, (4, 1), seed=0)
    model.over_arch.mlp[1] = torch.nn.Tanh()
    assert FrozenHead.of(model) is None


def test_a_hooked_head_takes_autograd() -> None:
    """A hook on the head (a probe, a gradient poison) runs only through autograd."""
    model = _model(2, 4, (4, 1), seed=0)
    head = FrozenHead.of(model)
    assert head is not None
    bottom, pooled = torch.randn(3, 4), torch.randn(3, 2, 4)
    assert head.applies(bottom, pooled)
    handle = model.over_arch.mlp[0].register_forward_hook(lambda *_: None)
    assert not head.applies(bottom, pooled)
    handle.remove()
    handle = torch.nn.modules.module.register_module_forward_hook(lambda *_: None)
    assert not head.applies(bottom, pooled)
    handle.remove()
    assert head.applies(bottom, pooled) and not head.applies(bottom.double(), pooled.double())


def test_trainer_steps_equal_the_autograd_path() -> None:
    """Two trainers on one model, one forced through autograd: after steps with admissions,
    evictions, a rank adaptation and a publish, their factors and losses are the same bits."""
    events = SyntheticConfig(num_events=40 * 64, batch_size=64, user_rows=400, item_rows=400)
    stream = SyntheticStream(events)
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(stream.schema, 16, (16,), (16,)))
    config = TrainerConfig(
        budget_fraction=0.3, adapt_every=15, room_every=5, publish_every=7, reuse=1
    )
    by_hand, autograd = LiveTrainer(copy.deepcopy(model), config), LiveTrainer(model, config)
    assert by_hand._head is not None
    autograd._head = None
    for now, batch in enumerate(stream):
        losses = []
        for trainer in (by_hand, autograd):
            trainer.serve(batch, float(now))
            losses.append([r.loss for r in trainer.train_ready(float(now))])
        assert losses[0] == losses[1]
    assert by_hand.stats.steps == autograd.stats.steps > 40
    for name, live in by_hand.lives.items():
        other = autograd.lives[name]
        assert live.rank == other.rank and torch.equal(live.ids, other.ids)
        assert torch.equal(live.A, other.A) and torch.equal(live.B, other.B)


def test_a_top_tuner_set_after_construction_takes_autograd_and_trains_the_top() -> None:
    """A node sets its trainer's top tuner when a policy asks for one (nodeworker/tuned_top.py):
    from then on the head trains, so the pass by hand (input gradients only) must not run."""
    stream = SyntheticStream(SyntheticConfig(num_events=8 * 64, batch_size=64, user_rows=400,
                                             item_rows=400))  # fmt: skip
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(stream.schema, 16, (16,), (16,)))
    trainer = LiveTrainer(model, TrainerConfig(budget_fraction=0.3, reuse=0))
    trainer.top = TopLayerTuner(model, 1, 0.05)
    last = model.over_arch.mlp[-1].weight.detach().clone()
    for now, batch in enumerate(stream):
        trainer.serve(batch, float(now))
        trainer.train_ready(float(now))
    assert trainer.stats.steps > 0 and not torch.equal(model.over_arch.mlp[-1].weight, last)
