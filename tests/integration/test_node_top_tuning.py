"""Tuning the top MLP on a real node (its trainer process and all): with lr_top > 0 the served
top MLP moves and serves exactly what the trainer published, a delta rebase's MLPs replace it,
and a snapshot taken before the rebase restores it (nodeworker.tuned_top)."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch

from dlrm_core.checkpoint import load_model
from dlrm_core.experiment.cluster import dense_state
from dlrm_core.model import DLRM
from nodeworker.control_socket import InvalidRequest
from nodeworker.runtime import NodeRuntime
from nodeworker.snapshots import read_top
from tests.integration.test_node_delta_rebase import TABLE, settle
from tests.integration.test_node_runtime import running_node, train_until
from tests.services import wait_until


@pytest.fixture
def node(tmp_path):
    with running_node(tmp_path) as node:
        yield node


def served_scores(runtime: NodeRuntime, request) -> torch.Tensor:
    scores, _, _ = runtime.predict(request)
    return scores


def tuned(runtime: NodeRuntime) -> dict[str, torch.Tensor]:
    """The served model's last top MLP layer, by parameter name."""
    last = len(runtime.inference.model.over_arch.mlp) - 1
    names = {f"over_arch.mlp.{last}.weight", f"over_arch.mlp.{last}.bias"}
    return {n: v.clone() for n, v in dense_state(runtime.inference.model).items() if n in names}


def test_the_node_tunes_serves_rebases_and_restores_its_top_mlp(node):
    runtime, traffic = node
    checkpoint = dense_state(load_model(runtime.state.checkpoint))
    policy = {**asdict(runtime.state.policy), "lr_top": 0.05, "top_layers": 1}
    with pytest.raises(InvalidRequest) as refused:  # 3 layers: 41 kB of a 45 kB budget
        runtime.operations.apply_policy({**policy, "top_layers": 3}, version=1)
    assert set(refused.value.fields) == {"policy.lr_top"}
    assert runtime.state.policy.lr_top == 0.0
    runtime.operations.apply_policy(policy, version=1)
    train_until(runtime, traffic, runtime.metrics.trained_samples + 600)
    settle(runtime)

    request = next(traffic)
    model = runtime.inference.model
    served, top = dense_state(model), tuned(runtime)
    assert all(not torch.equal(v, checkpoint[n]) for n, v in top.items())  # it moved
    assert all(torch.equal(v, checkpoint[n]) for n, v in served.items() if n not in top)
    scores = served_scores(runtime, request)
    frozen = DLRM(model.config)
    frozen.load_state_dict(model.state_dict())
    frozen.load_state_dict(checkpoint, strict=False)  # the same base, the checkpoint's top
    with torch.no_grad():
        untuned = torch.sigmoid(frozen(request, delta=runtime.inference.delta))
    assert not torch.allclose(scores, untuned, atol=1e-6)  # the tuned top changes what serves

    # what serves is what the trainer published: its snapshot holds the trainer's weights
    snap = runtime.operations.snapshot()["snapshot"]
    held = read_top(runtime.operations.snapshots.root / snap)
    assert set(held) == set(top)
    assert all(torch.equal(torch.from_numpy(held[n]), v) for n, v in tuned(runtime).items())
    assert all(torch.equal(v, top[n]) for n, v in tuned(runtime).items())

    # a delta rebase's MLPs replace the tuned layers in the trainer and in inference
    torch.manual_seed(7)
    mlps = dense_state(DLRM(model.config))
    runtime.operations.apply_delta(
        {TABLE: {"rows": [0], "values": [[0.0] * model.config.embedding_dim]}},
        dense={n: v.tolist() for n, v in mlps.items()},
    )
    assert all(torch.equal(v, mlps[n]) for n, v in dense_state(model).items())
    runtime.operations.resume()  # tuning goes on from the cluster's layers
    train_until(runtime, traffic, runtime.metrics.trained_samples + 300)
    settle(runtime)
    after = tuned(runtime)
    assert all(not torch.equal(v, mlps[n]) for n, v in after.items())
    assert all(torch.equal(v, mlps[n]) for n, v in dense_state(model).items() if n not in after)
    # tuned on the cluster's MLPs, which a restore does not bring back: a snapshot keeps none
    later = runtime.operations.snapshot()["snapshot"]
    assert read_top(runtime.operations.snapshots.root / later) == {}

    # a restore serves the snapshot's top again, on the checkpoint's other MLPs
    runtime.operations.restore_snapshot(snap)
    wait_until(
        lambda: all(torch.equal(v, top[n]) for n, v in tuned(runtime).items()),
        60,
        "the restored trainer's top to serve",
        interval=0.2,
    )
    served = dense_state(model)
    assert all(torch.equal(v, checkpoint[n]) for n, v in served.items() if n not in top)
