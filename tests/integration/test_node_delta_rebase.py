"""A delta rebase on a real node (its trainer process and all): the refreshed rows serve the
cluster's rows exactly, a row the rebase did not refresh keeps its correction, and inference
serves with the cluster's MLPs."""

from __future__ import annotations

import time

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.checkpoint import load_model
from dlrm_core.experiment.cluster import dense_state
from dlrm_core.model import DLRM, base_weight
from nodeworker.control_socket import InvalidRequest
from nodeworker.runtime import NodeRuntime
from tests.integration.test_node_runtime import running_node, train_until
from tests.services import wait_until

TABLE = "item_id"
UNTRAINED = "ctx_1"  # a small table the trainer does not correct


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as node:
        yield node


@pytest.fixture
def hybrid_node(tmp_path):
    """A node started hybrid: its budget holds the anchor share from the start (a trainer keeps
    the tables it started with, and these 0.45 MB of tables at 10% less the anchor share do not
    hold the floors of all four)."""
    with running_node(tmp_path, policy={"rebase_period_s": 1800.0}) as node:
        yield node


def served_rows(runtime: NodeRuntime, table: str, ids: torch.Tensor) -> torch.Tensor:
    """(m, D) what inference serves for rows ``ids`` of ``table``: the base row plus the
    correction of the factor version in service (one-row bags; row 0 of the other tables)."""
    model = runtime.inference.model
    names = model.config.feature_names
    m = ids.numel()
    others = torch.zeros(m, dtype=torch.int64)
    batch = SparseBatch(
        keys=names,
        values=tuple(ids.clone() if n == table else others for n in names),
        offsets=tuple(torch.arange(m) for _ in names),
        dense=torch.zeros(m, model.config.n_dense),
        labels=torch.zeros(m),
        timestamps=torch.zeros(m, dtype=torch.float64),
        request_ids=torch.arange(m),
    )
    with runtime.inference.exclusive, torch.no_grad():
        pooled = model.sparse_arch(batch)
        if runtime.inference.delta is not None:
            runtime.inference.delta.add_to_(pooled, batch)
    return pooled[:, names.index(table)].clone()


def settle(runtime: NodeRuntime) -> None:
    """Pause the trainer and wait until its last version serves: corrections stop changing."""
    runtime.operations.pause()
    last = [-1]

    def still() -> bool:
        samples = runtime.metrics.trained_samples
        steady = samples == last[0] and runtime.inference.version == runtime.shared.version
        last[0] = samples
        return steady

    wait_until(still, 60, "the paused trainer's last version to serve", interval=0.5)


def test_a_delta_rebase_refreshes_its_rows_and_keeps_the_others_corrections(node):
    runtime, traffic = node
    train_until(runtime, traffic, 800)
    settle(runtime)
    model = runtime.inference.model
    n_rows = base_weight(model, TABLE).shape[0]
    every = torch.arange(n_rows)
    corrected = (served_rows(runtime, TABLE, every) != base_weight(model, TABLE)).any(dim=1)
    active = every[corrected]
    assert active.numel() >= 4, "the trainer corrected too few rows to split"
    refreshed, kept = active[::2], active[1::2]
    fresh_row = int(every[~corrected][0])  # a row without correction, refreshed too
    ids = torch.cat([refreshed, torch.tensor([fresh_row])])
    kept_before = served_rows(runtime, TABLE, kept)
    torch.manual_seed(99)
    cluster = DLRM(model.config)  # the cluster's MLPs: not the node's
    mlps = dense_state(cluster)
    assert any(not torch.equal(v, dense_state(model)[n]) for n, v in mlps.items())
    values = torch.randn(ids.numel(), model.config.embedding_dim)
    learnt = time.time() - 5.0

    ctx_ids, ctx_values = torch.tensor([0, 3]), torch.randn(2, model.config.embedding_dim)
    result = runtime.operations.apply_delta(
        {
            TABLE: {"rows": ids.tolist(), "values": values.tolist()},
            UNTRAINED: {"rows": ctx_ids.tolist(), "values": ctx_values.tolist()},
        },
        created_at=learnt + 1.0,
        trained_until=learnt,
        dense={name: value.tolist() for name, value in mlps.items()},
    )

    assert torch.equal(served_rows(runtime, TABLE, ids), values)  # the cluster's rows, exactly
    assert torch.equal(served_rows(runtime, UNTRAINED, ctx_ids), ctx_values)
    torch.testing.assert_close(served_rows(runtime, TABLE, kept), kept_before, rtol=0, atol=1e-6)
    assert all(torch.equal(v, mlps[n]) for n, v in dense_state(model).items())
    assert result["rebase"] is True and result["corrections_dropped"][TABLE] == refreshed.numel()
    mlp_bytes = sum(4 * v.numel() for v in mlps.values())
    assert result["mlp_bytes"] == mlp_bytes
    rows = ids.numel() + ctx_ids.numel()
    assert result["bytes"] == rows * (8 + 4 * model.config.embedding_dim) + mlp_bytes
    event = [e for e in runtime.events if e.kind == "sync"][-1]
    assert event.detail == result and result["trained_until"] == learnt

    runtime.operations.resume()  # the trainer learns on, with the rebased rows and MLPs
    train_until(runtime, traffic, runtime.metrics.trained_samples + 200)
    assert runtime.trainer.alive

    # back to the bare base: the checkpoint's MLPs again, as the restarted trainer's
    runtime.operations.restore_snapshot("base")
    checkpoint = dense_state(load_model(runtime.state.checkpoint))
    assert all(torch.equal(v, checkpoint[n]) for n, v in dense_state(model).items())


def test_a_rebase_with_bad_mlps_changes_nothing(node):
    runtime, _ = node
    model = runtime.inference.model
    mlps = {name: value.tolist() for name, value in dense_state(model).items()}
    first, second = list(mlps)[:2]
    before = base_weight(model, TABLE)[:2].clone()
    bad = {
        **mlps,
        first: [[float("nan")]],
        "over_arch.nope": [1.0],
    }
    del bad[second]
    with pytest.raises(InvalidRequest) as refused:
        runtime.operations.apply_delta(
            {TABLE: {"rows": [0, 1], "values": [[0.5] * 16] * 2}}, dense=bad
        )
    assert set(refused.value.fields) == {
        f"dense.{first}",
        f"dense.{second}",
        "dense.over_arch.nope",
    }
    assert torch.equal(base_weight(model, TABLE)[:2], before)


def overhead(runtime: NodeRuntime) -> int:
    """The trainer's proportional bytes in its newest stats."""
    stats = runtime.trainer.last_stats
    assert stats is not None
    return sum(o for o, _ in stats.memory.values())


def steady_overhead(runtime: NodeRuntime) -> int:
    seen: list[int] = []

    def steady() -> bool:
        seen.append(overhead(runtime))
        return len(seen) >= 3 and seen[-1] == seen[-2] == seen[-3]

    wait_until(steady, 30, "the paused trainer's memory to settle", interval=0.3)
    return seen[-1]


def test_an_announced_rebase_carries_what_the_node_learnt_since_its_snapshot(hybrid_node):
    runtime, traffic = hybrid_node
    train_until(runtime, traffic, 800)
    settle(runtime)
    model = runtime.inference.model
    every = torch.arange(base_weight(model, TABLE).shape[0])
    corrected = (served_rows(runtime, TABLE, every) != base_weight(model, TABLE)).any(dim=1)
    ids = every[corrected]
    held = steady_overhead(runtime)
    then = served_rows(runtime, TABLE, ids)  # what the paused trainer serves at the announce

    announced = runtime.operations.announce_snapshot(snapshot=11, taken_at=time.time())
    assert 0 < announced["rows_anchored"][TABLE] <= ids.numel()
    tables = len(runtime.trainer.last_stats.memory)
    wait_until(lambda: overhead(runtime) != held, 30, "stats with the anchor", interval=0.2)
    assert abs(overhead(runtime) - held - announced["anchor_bytes"]) <= tables  # accounted

    runtime.operations.resume()  # the node learns while the rows travel
    train_until(runtime, traffic, runtime.metrics.trained_samples + 300)
    settle(runtime)
    holding = steady_overhead(runtime)
    change = served_rows(runtime, TABLE, ids) - then
    values = torch.randn(ids.numel(), model.config.embedding_dim)
    mlps = dense_state(model)
    result = runtime.operations.apply_delta(
        {TABLE: {"rows": ids.tolist(), "values": values.tolist()}},
        created_at=time.time(),
        dense={name: value.tolist() for name, value in mlps.items()},
        snapshot=11,
    )

    assert result["carry"] == "carried" and result["snapshot"] == 11
    after = served_rows(runtime, TABLE, ids)
    carried = (after - (values + change)).abs().amax(dim=1) <= 1e-5
    overwritten = torch.equal(after[~carried], values[~carried])
    moved = int((carried & change.ne(0).any(dim=1)).sum())
    assert overwritten and moved == result["rows_carried"][TABLE] > 0
    assert moved <= announced["rows_anchored"][TABLE]
    # the anchor went with its rows (their corrections too; their pages are the file's again);
    # each of the two sums floors one share per table (held_bytes): 2 bytes a table of slack
    assert steady_overhead(runtime) <= holding - announced["anchor_bytes"] + 2 * tables

    again = runtime.operations.apply_delta(  # its anchor is gone: overwrite and drop
        {TABLE: {"rows": ids.tolist(), "values": values.tolist()}},
        dense={name: value.tolist() for name, value in mlps.items()},
        snapshot=11,
    )
    assert again["carry"] == "its announce did not reach the trainer"
    assert torch.equal(served_rows(runtime, TABLE, ids), values)
    event = [e for e in runtime.events if e.kind == "sync"][-1]
    assert event.detail["carry"] == again["carry"] and event.detail["rows_carried"] == {}
