"""Snapshots and rollback on a real node: list_snapshots reports what each snapshot holds,
restore_snapshot serves one again (or the bare base), and the control plane's automatic rollback
restores the last good snapshot of a node whose AUC was induced to drop, through the real
broker, node worker and control socket."""

from __future__ import annotations

import time

import pytest
import torch
from django.test import override_settings
from django.utils import timezone

from controlplane.models import Alert, Node, NodeAction, NodeEvent, Policy
from controlplane.services import actions, ingest, rollback
from controlplane.services.policies import save_policy
from dlrm_core.checkpoint import load_model
from dlrm_core.model import base_weight
from nodeworker.control_socket import InvalidRequest
from nodeworker.snapshots import read_patch
from tests.integration.cp_support import make_node
from tests.integration.node_support import corrupt_base, real_node, trained_snapshot
from tests.integration.test_node_runtime import running_node, serve_and_label
from tests.services import wait_until


def base_is_checkpoint_plus_patch(runtime, snapshot: str | None) -> bool:
    """The served base tables are the checkpoint's, with the snapshot's folded rows written in."""
    fresh = load_model(runtime.state.checkpoint)
    for table in runtime.inference.model.config.feature_names:
        want = fresh.sparse_arch.table(table).weight.detach().clone()
        patch = runtime.snapshots.root / str(snapshot) / f"{table}.patch"
        if snapshot is not None and patch.exists():  # a table the trainer does not train: none
            ids, rows = read_patch(patch)
            want[ids] = rows
        if not torch.equal(base_weight(runtime.inference.model, table), want):
            return False
    return True


def test_snapshots_are_listed_and_restored(tmp_path):
    with running_node(tmp_path) as (runtime, traffic):
        first = trained_snapshot(runtime, traffic, 300)
        second = trained_snapshot(runtime, traffic, runtime.metrics.trained_samples + 100)
        listing = runtime.operations.list_snapshots()
        names = [s["name"] for s in listing["snapshots"]]
        assert names == [second["snapshot"], first["snapshot"]]  # newest first
        for entry in listing["snapshots"]:
            assert entry["restorable"] and entry["checkpoint"] == runtime.state.checkpoint
            assert entry["auc"] is not None and 0.0 <= entry["auc"] <= 1.0
            trained = set(entry["tables"])  # the tables with LoRA factors
            assert trained and trained <= set(runtime.inference.model.config.feature_names)
            assert all(t["rank"] >= 1 and t["rows"] >= 0 for t in entry["tables"].values())

        corrupt_base(runtime)
        restored = runtime.operations.restore_snapshot(first["snapshot"], reason="test")
        assert restored["restored"] == first["snapshot"]
        assert base_is_checkpoint_plus_patch(runtime, first["snapshot"])
        assert runtime.trainer.alive
        event = [e for e in runtime.events if e.kind == "snapshot"][-1].detail
        want = {"restored": first["snapshot"], "asked": first["snapshot"], "reason": "test"}
        assert event == want
        serve_and_label(runtime, traffic, 20)  # and it serves on
        tables = runtime.inference.model.config.feature_names
        resumed = runtime.snapshots.restorable(runtime.state.checkpoint, tables)
        assert resumed is not None and resumed.name == first["snapshot"]  # what a crash resumes

        assert runtime.operations.restore_snapshot("base")["restored"] == "base"
        assert base_is_checkpoint_plus_patch(runtime, None)
        assert runtime.snapshots.restorable(runtime.state.checkpoint, tables) is None
        newest = max(first["auc"], second["auc"])
        above = runtime.operations.restore_snapshot("last_good", min_auc=min(1.0, newest + 1e-6))
        assert above["restored"] == "base"  # no snapshot that good: the bare base
        good = runtime.operations.restore_snapshot("last_good", min_auc=0.0)
        assert good["restored"] == second["snapshot"]
        with pytest.raises(InvalidRequest) as missing:
            runtime.operations.restore_snapshot("snap-1")
        assert missing.value.fields == {"name": "No such snapshot on this node."}


def ingest_window(node: Node, runtime, seq: int) -> int:
    """One telemetry sample of the real node, through the plane's real ingest; the next seq."""
    sample = runtime.telemetry_snapshot().to_sample(seq, time.time())
    ingest.ingest_batch(node, {"node": node.name, "samples": [sample]})
    return seq + 1


@pytest.mark.django_db(transaction=True)
@override_settings(LIVEUPDATE_SLA_INTERVAL_S=1)
def test_automatic_rollback_restores_the_last_good_snapshot_of_a_real_node(redis_url, tmp_path):
    name = f"rb-{int(time.time() * 1000) % 10**8}"
    with real_node(name, tmp_path, redis_url) as (runtime, traffic):
        good = trained_snapshot(runtime, traffic, 500)
        floor = round(good["auc"] - 0.03, 4)
        assert floor > 0.5, f"the node learnt too little to judge a drop: AUC {good['auc']}"
        policy = Policy(  # 10% as the node started (node_support.start_node)
            name=f"p-{name}", sla_p99_ms=5000.0, auc_floor=floor, rollback_after_intervals=2,
            memory_budget_pct=10.0,
        )  # fmt: skip
        save_policy(policy, actor="user:ops", reason="rollback on")
        node = make_node(name, policy=policy)[0]
        actions.request_action(node, "apply_policy", actor="user:ops")  # judged: applied ones

        corrupt_base(runtime)  # the induced drop
        seq = 0

        def dropped() -> bool:
            nonlocal seq
            serve_and_label(runtime, traffic, 40)
            seq = ingest_window(node, runtime, seq)
            auc = runtime.metrics.window(time.time())["auc"]
            return auc is not None and auc < floor - 0.01

        wait_until(dropped, 120, f"the node's AUC under {floor}", interval=0.2)
        for _ in range(3):  # two full intervals of 1 s under the floor
            time.sleep(1.0)
            serve_and_label(runtime, traffic, 10)
            seq = ingest_window(node, runtime, seq)

        assert rollback.run(timezone.now()) == [name]
        record = NodeAction.objects.get(node=node, action="restore_snapshot")
        assert record.actor == "watchdog" and record.kwargs["min_auc"] == floor

        def answered() -> bool:
            return actions.refresh_action(record).state != NodeAction.State.SENT

        wait_until(answered, 120, "the node's answer to the rollback", interval=0.5)
        assert record.state == NodeAction.State.SUCCEEDED, record.error
        assert record.result["restored"] == good["snapshot"]  # the snapshot taken while fine
        assert base_is_checkpoint_plus_patch(runtime, good["snapshot"])  # the bad rows are gone
        Alert.objects.get(node=node, kind="rollback", resolved_at=None)
        seq = ingest_window(node, runtime, seq)  # the node reports the restore as an event
        events = NodeEvent.objects.filter(node=node, kind="snapshot")
        shown = events.values_list("detail", flat=True)
        assert any(d.get("restored") == good["snapshot"] and "under" in d["reason"] for d in shown)
