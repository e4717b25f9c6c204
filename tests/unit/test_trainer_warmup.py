"""The trainer process's warm-up: a throwaway trainer shaped like the node's trains, publishes and
is dropped; the node's own model and the process's random stream are untouched."""

from __future__ import annotations

import copy

import torch

from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.trainer import LiveTrainer, TrainerConfig
from nodeworker.trainer_warmup import WARMUP_ROWS, warm_up, warmup_batch

CONFIG = DLRMConfig(("user", "item"), (50_000, 80_000), 3, 16, (16,), (16, 1))


def test_warm_up_trains_a_throwaway_and_leaves_the_rng_and_the_model_alone():
    torch.manual_seed(7)
    model = DLRM(CONFIG)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainerConfig(in_process_join=False)
    budgets = {"user": 40_000, "item": 60_000}
    state = torch.random.get_rng_state()
    assert warm_up(CONFIG, config, budgets, batch_rows=64, steps=12) == 12
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(v, weights[k]) for k, v in model.state_dict().items())
    # the node's trainer built after it learns exactly as one built without a warm-up
    learnt = []
    for warm in (True, False):
        torch.manual_seed(3)
        if warm:
            warm_up(CONFIG, config, budgets, batch_rows=64, steps=3)
        trainer = LiveTrainer(copy.deepcopy(model), config, budgets)
        batch = warmup_batch(CONFIG, 64, torch.Generator().manual_seed(5))
        assert trainer.train_step(batch, 0.0).skipped is None
        learnt.append({n: (f.ids, f.a, f.b) for n, f in trainer.publish().tables.items()})
    for name, (ids, a, b) in learnt[0].items():
        other = learnt[1][name]
        assert torch.equal(ids, other[0]) and torch.equal(a, other[1]) and torch.equal(b, other[2])


def test_a_warmup_batch_has_the_models_shape_and_ids_in_range():
    small = DLRMConfig(("a", "b"), (WARMUP_ROWS, WARMUP_ROWS), 2, 4, (4,), (4, 1))
    batch = warmup_batch(small, 32, torch.Generator().manual_seed(1))
    assert len(batch) == 32 and batch.dense.shape == (32, 2)
    assert all(int(v.max()) < WARMUP_ROWS and int(v.min()) >= 0 for v in batch.values)
    assert set(batch.labels.tolist()) <= {0.0, 1.0}
