"""The node's tuning of its top MLP (nodeworker.tuned_top): the policy's fields and bounds, what
the trainer side starts, retunes and stops, what it publishes, and what the budget plans for."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.trainer import LiveTrainer, TrainerConfig
from nodeworker import protocol
from nodeworker.node_budget import node_budget
from nodeworker.tuned_top import (
    MAX_BUDGET_SHARE,
    TopTuning,
    fitting,
    tuned_floats,
    tuned_layers,
    tuning_bytes,
    tuning_error,
)

CONFIG = DLRMConfig(("user", "item"), (500, 300), 2, 8, (8,), (6, 4, 1))
POLICY = replace(protocol.DEFAULT_POLICY, lr_top=0.1, top_layers=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr_top", -0.01),
        ("lr_top", 1.5),
        ("lr_top", float("nan")),
        ("lr_top", "fast"),
        ("top_layers", 0),
        ("top_layers", 17),
        ("top_layers", 1.5),
    ],
)
def test_the_policy_refuses_top_tuning_out_of_bounds(field, value):
    policy, errors = protocol.validate_policy({field: value})
    assert policy is None and set(errors) == {field}


def test_top_tuning_is_off_by_default_and_within_bounds_accepted():
    assert protocol.DEFAULT_POLICY.lr_top == 0.0  # measured: docs/RESULTS.md
    policy, errors = protocol.validate_policy({"lr_top": 1.0, "top_layers": 16})
    assert errors == {} and policy is not None and policy.top_layers == 16
    assert tuned_layers(CONFIG, policy) == 3  # as many as the top MLP has


def batch(n: int = 16) -> SparseBatch:
    g = torch.Generator().manual_seed(1)
    return SparseBatch(
        keys=CONFIG.feature_names,
        values=tuple(torch.randint(0, 300, (n,), generator=g) for _ in CONFIG.feature_names),
        offsets=tuple(torch.arange(n) for _ in CONFIG.feature_names),
        dense=torch.randn(n, 2, generator=g),
        labels=torch.randint(0, 2, (n,), generator=g).float(),
        timestamps=torch.zeros(n, dtype=torch.float64),
        request_ids=torch.arange(n),
    )


def trainer(policy: protocol.Policy) -> tuple[LiveTrainer, TopTuning]:
    torch.manual_seed(0)
    live = LiveTrainer(
        DLRM(CONFIG),
        TrainerConfig(
            in_process_join=False,
            lr_top=policy.lr_top,
            top_layers=tuned_layers(CONFIG, policy),
        ),
    )
    return live, TopTuning(live)


def test_the_budget_plans_what_tuning_holds():
    live, tuning = trainer(POLICY)
    live.train_step(batch(), 1.0)
    published = tuning.published()
    assert set(published) == {f"over_arch.mlp.{i}.{p}" for i in (2, 4) for p in ("weight", "bias")}
    assert live.top is not None
    assert live.top.nbytes + tuning.sent_bytes == tuning_bytes(CONFIG, POLICY)
    assert tuning.sent_bytes == 4 * tuned_floats(CONFIG, 2) == 4 * (6 * 4 + 4 + 4 * 1 + 1)
    assert tuning_bytes(CONFIG, protocol.DEFAULT_POLICY) == 0
    node = replace(CONFIG, table_sizes=(200_000, 100_000))
    off, on = node_budget(node, protocol.DEFAULT_POLICY), node_budget(node, POLICY)
    assert on.total == off.total and set(on.tables) == {"user", "item"}
    # the same cap: tuning's bytes come out of the tables' part (up to a byte a table rounding)
    taken = sum(off.tables.values()) - sum(on.tables.values())
    assert abs(taken - tuning_bytes(node, POLICY)) <= 2


def test_tuning_starts_retunes_stops_and_resets_as_told():
    live, tuning = trainer(protocol.DEFAULT_POLICY)
    assert live.top is None and tuning.published() == {}
    tuning.apply(POLICY)
    top = live.top
    assert top is not None and len(top.params) == 4
    live.train_step(batch(), 1.0)
    last = live.model.over_arch.mlp[-1].weight
    tuning.apply(replace(POLICY, lr_top=0.5))  # only the rate: the accumulators stay
    assert live.top is top and top.optimizer.param_groups[0]["lr"] == 0.5
    tuning.apply(replace(POLICY, top_layers=1))
    assert live.top is not top and live.top is not None and len(live.top.params) == 2
    assert not live.model.over_arch.mlp[2].weight.requires_grad  # no longer tuned
    tuning.published()
    assert tuning.touched == {"over_arch.mlp.4.weight", "over_arch.mlp.4.bias"}
    assert set(tuning.kept()) == tuning.touched
    kept = live.top
    tuning.rebased()  # a rebase's MLPs came: fresh accumulators, and snapshots keep none
    assert live.top is not kept and tuning.kept() == {}
    assert all(float(s["sum"].abs().sum()) == 0 for s in live.top.optimizer.state.values())
    live.train_step(batch(), 1.5)
    assert tuning.published() and tuning.kept() == {}
    moved = last.detach().clone()
    tuning.apply(protocol.DEFAULT_POLICY)  # off: the weights stay as tuned
    assert live.top is None and not last.requires_grad and torch.equal(last, moved)
    live.train_step(batch(), 2.0)
    assert torch.equal(last, moved)


def test_tuning_that_does_not_fit_the_budget_is_refused_or_left_off():
    node = replace(CONFIG, table_sizes=(200_000, 100_000))  # 2% of 19.2 MB of tables
    assert tuning_error(node, POLICY) is None and fitting(node, POLICY) == POLICY
    criteo = DLRMConfig.criteo_reference([100_000] * 26)  # top 512-256-1
    one = replace(POLICY, top_layers=1)
    assert tuning_error(criteo, one) is None
    error = tuning_error(criteo, POLICY)  # the last two layers: 1.6 MB of a 3.3 MB budget
    assert error is not None and "1579036 bytes" in error
    assert tuning_bytes(criteo, POLICY) > MAX_BUDGET_SHARE * 3_328_000
    assert fitting(criteo, POLICY) == replace(POLICY, lr_top=0.0)
