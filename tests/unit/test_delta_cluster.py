"""The demo's simulated training cluster: it ships exactly the rows it changed (the node gets
the cluster's values), and a failed sync loses nothing; the demo's replay options parse."""

from __future__ import annotations

import argparse
import threading

import pytest
import torch

from controlplane.commands import demo
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
from nodeworker.delta_cluster import ClusterConfig, DeltaSyncCluster
from nodeworker.service import synthetic_config


def small_stream(**kw) -> SyntheticStream:
    cfg = dict(num_events=1024, batch_size=128, user_rows=500, item_rows=300)
    return SyntheticStream(SyntheticConfig(**{**cfg, **kw}))


def test_sync_ships_the_changed_rows_and_keeps_them_when_the_node_is_down():
    stream = small_stream()
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    before = {n: model.sparse_arch.table(n).weight.detach().clone() for n in stream.schema.keys}
    sent: list[dict] = []
    down = True

    def send(deltas):
        if down:
            raise ConnectionRefusedError("node restarting")
        sent.append(deltas)

    cluster = DeltaSyncCluster(model, send, ClusterConfig(sync_period_s=1.0))
    batches = iter(stream)
    cluster.learn(next(batches))
    assert cluster.sync() == 0 and cluster.failed_syncs == 1  # nothing lost: still dirty
    cluster.learn(next(batches))
    down = False
    shipped = cluster.sync()
    assert shipped > 0 and cluster.syncs == 1 and len(sent) == 1
    for name, delta in sent[0].items():
        weight = model.sparse_arch.table(name).weight.detach()
        rows = torch.tensor(delta["rows"])
        assert torch.equal(torch.tensor(delta["values"]), weight[rows])
        changed = (weight != before[name]).any(dim=1).nonzero().flatten()
        assert set(changed.tolist()) <= set(delta["rows"])  # every changed row is shipped
    assert cluster.sync() == 0 and len(sent) == 1  # nothing new: nothing sent


def test_run_paces_to_the_nodes_clock_and_ships_the_rest_at_the_end():
    stream = small_stream(num_events=256)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    sent: list[dict] = []
    cluster = DeltaSyncCluster(model, sent.append, ClusterConfig(60.0, qps=1000.0, label_delay_s=0))
    cluster.run(iter(stream), threading.Event())
    assert cluster.events == 256 and len(sent) == 1  # the period never came: the final sync


def test_synthetic_replay_options():
    cfg = synthetic_config("synthetic:drift_per_hour=60,user_rows=2000", seed=3)
    assert (cfg.drift_per_hour, cfg.user_rows, cfg.seed) == (60.0, 2000, 3)
    assert synthetic_config("synthetic", seed=0).item_rows == 50_000
    for bad, message in [
        ("synthetic:nope=1", "not a numeric"),
        ("synthetic:seed=4", "not a numeric"),
        ("synthetic:user_rows=x", "not a number"),
        ("synthetic:user_rows=1", "out of bounds"),
    ]:
        with pytest.raises(ValueError, match=message):
            synthetic_config(bad, seed=0)
    with pytest.raises(ValueError, match="qps"):
        ClusterConfig(qps=0)


def test_demo_arguments(tmp_path):
    def spec(**kw):
        base = dict(data=None, format=None, drift=60.0)
        return demo._replay_spec(argparse.Namespace(**{**base, **kw}))

    assert synthetic_config(spec(), seed=0).drift_per_hour == 60.0
    with pytest.raises(SystemExit, match="--format needs --data"):
        spec(format="criteo")
    with pytest.raises(SystemExit, match="--data needs --format"):
        spec(data=tmp_path)
    with pytest.raises(SystemExit, match="no such file"):
        spec(data=tmp_path / "missing", format="criteo")
    assert spec(data=tmp_path, format="movielens") == f"movielens:{tmp_path}"
