"""Desired state on the node (issue 17, failure 2): a node restarted after apply_policy (with
the watchdog's override of it) and a rebase comes back into all three, resumes the factors it
learnt on the new base, and says so in ``running``; a saved state that no longer fits is
ignored, never fatal."""

from __future__ import annotations

import json

import torch

from dlrm_core.checkpoint import save_model
from dlrm_core.model import DLRM
from nodeworker.node_state import APPLIED_FILE
from nodeworker.protocol import telemetry as protocol_telemetry
from tests.integration.test_node_runtime import running_node, train_until


def test_a_restarted_node_comes_back_into_its_policy_override_and_rebase(tmp_path):
    with running_node(tmp_path, name="t-restart") as (runtime, traffic):
        assert runtime.running_state() == protocol_telemetry.RunningState(None, None)
        result = runtime.operations.apply_policy(
            # 10% as start_node: at 2% these 0.45 MB of tables hold no table's floor
            {"r_max": 3, "sla_p99_ms": 4500.0, "max_trainer_duty": 0.8, "memory_budget_pct": 10.0},
            "tight",
            7,
            overrides={"max_trainer_duty": 0.2},  # the watchdog's cut (stricter than 0.8)
        )
        assert result["overrides"] == {"max_trainer_duty": 0.2}
        assert runtime.qos.config.max_duty == 0.2
        torch.manual_seed(5)
        newer = DLRM(runtime.inference.model.config)
        digest = save_model(tmp_path / "newer.ckpt", newer)
        wire = {"name": "newer", "location": str(tmp_path / "newer.ckpt"), "checksum": digest}
        runtime.operations.rebase(wire)
        assert runtime.running_state() == protocol_telemetry.RunningState(7, f"sha256:{digest}")
        train_until(runtime, traffic, 300)
        snap = runtime.operations.snapshot()  # taken on the new base
        policy = runtime.state.policy

    with running_node(tmp_path, name="t-restart") as (again, _):
        assert again.running_state() == protocol_telemetry.RunningState(7, f"sha256:{digest}")
        assert again.state.policy == policy and policy.r_max == 3
        assert policy.max_trainer_duty == 0.2  # in force: the stricter of policy and override
        assert again.qos.config.sla_p99_ms == 4500.0 and again.qos.config.max_duty == 0.2
        # what people set and the override stay apart (the plane lifts the override later)
        assert again.state.applied.policy is not None
        assert again.state.applied.policy.max_trainer_duty == 0.8
        assert again.state.applied.overrides == {"max_trainer_duty": 0.2}
        assert again.operations.status()["overrides"] == {"max_trainer_duty": 0.2}
        assert again.state.checkpoint == str(tmp_path / "newer.ckpt")
        assert again.restore_dir is not None and again.restore_dir.name == snap["snapshot"]
        # the dense layers are the new base's (the tables carry the snapshot's folded rows)
        served = again.inference.model.over_arch.state_dict()
        for key, value in newer.over_arch.state_dict().items():
            assert torch.equal(served[key], value), key


def test_a_saved_state_that_no_longer_fits_is_ignored(tmp_path):
    (tmp_path / "node").mkdir()
    applied = tmp_path / "node" / APPLIED_FILE
    applied.write_text(
        json.dumps(
            {
                "policy": {"r_max": -4},  # a bound it breaks
                "policy_version": 3,
                "checkpoint": str(tmp_path / "gone.ckpt"),  # deleted since
                "checkpoint_checksum": "sha256:" + "0" * 64,
            }
        )
    )
    with running_node(tmp_path, name="t-stale", trainer=False) as (runtime, _):
        assert runtime.running_state() == protocol_telemetry.RunningState(None, None)
        assert runtime.state.checkpoint == str(tmp_path / "base.ckpt")
        assert runtime.state.policy.sla_p99_ms == 5000.0  # the start-up policy
    applied.write_text("{not json")  # a torn or foreign file
    with running_node(tmp_path, name="t-stale", trainer=False) as (runtime, _):
        assert runtime.running_state() == protocol_telemetry.RunningState(None, None)
        runtime.operations.apply_policy(
            {"r_max": 2, "memory_budget_pct": 10.0}, "p", 4
        )  # and the next apply rewrites it
        assert json.loads(applied.read_text())["policy_version"] == 4


def test_a_snapshot_bigger_than_the_budget_it_restarts_into_is_fitted_not_fatal(tmp_path):
    """A node restarted at a lower budget than its last snapshot was taken at (an operator's
    lower budget, applied after that snapshot) restores the snapshot's factors, then evicts its
    coldest rows to fit (folding their corrections into the base) and trains on. Before, its
    trainer died in its first step (more active rows than its region holds), and again at every
    restart."""
    with running_node(tmp_path, name="t-shrink") as (runtime, traffic):
        train_until(runtime, traffic, 3000)
        snap = runtime.operations.snapshot()
        roomy = runtime.trainer.last_stats.memory
    assert roomy is not None
    tables = sum(base for _, base in roomy.values())
    assert sum(used for used, _ in roomy.values()) > 0.05 * tables  # it cannot fit at 5%
    with running_node(tmp_path, name="t-shrink", policy={"memory_budget_pct": 5.0}) as (
        again,
        traffic,
    ):
        assert again.restore_dir is not None and again.restore_dir.name == snap["snapshot"]
        start = again.metrics.trained_samples
        train_until(again, traffic, start + 1000)  # raises if the trainer died
        memory = again.trainer.last_stats.memory
        assert sum(used for used, _ in memory.values()) <= 0.05 * tables
        assert again.trainer.alive and again.inference.version > 0
