"""The demo's simulated training cluster: it ships exactly the rows it changed (the node gets
the cluster's values), plus its MLPs to a node that takes delta rebases (whose MLPs only then
learn), and a failed sync loses nothing; the demo's replay options parse, and
its nodes and cluster replay from where the base's pretraining stopped."""

from __future__ import annotations

import argparse
import logging
import threading
import time

import pytest
import torch

from controlplane.commands import demo
from dlrm_core.experiment.cluster import dense_state
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
from nodeworker import delta_cluster
from nodeworker.delta_cluster import ClusterConfig, DeltaSyncCluster, SyncStamp
from nodeworker.node_service import open_source, synthetic_config


def small_stream(**kw) -> SyntheticStream:
    cfg = dict(num_events=1024, batch_size=128, user_rows=500, item_rows=300)
    return SyntheticStream(SyntheticConfig(**{**cfg, **kw}))


def test_sync_ships_the_changed_rows_and_keeps_them_when_the_node_is_down():
    stream = small_stream()
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    before = {n: model.sparse_arch.table(n).weight.detach().clone() for n in stream.schema.keys}
    sent: list[dict] = []
    stamps: list[SyncStamp] = []
    down = True

    def send(deltas, stamp, dense):
        if down:
            raise ConnectionRefusedError("node restarting")
        assert dense is None  # a delta sync: rows only
        sent.append(deltas)
        stamps.append(stamp)

    cluster = DeltaSyncCluster(model, send, ClusterConfig(sync_period_s=1.0))
    batches = iter(stream)
    cluster.learn(next(batches))
    assert cluster.sync() == 0 and cluster.failed_syncs == 1  # nothing lost: still dirty
    cluster.learn(next(batches))
    down = False
    learnt_at = cluster.trained_until
    shipped = cluster.sync()
    assert shipped > 0 and cluster.syncs == 1 and len(sent) == 1
    assert learnt_at is not None and stamps[0].trained_until == learnt_at
    assert stamps[0].created_at >= learnt_at
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
    cluster = DeltaSyncCluster(
        model,
        lambda deltas, _, dense: sent.append(deltas),
        ClusterConfig(60.0, qps=1000.0, label_delay_s=0),
    )
    cluster.run(iter(stream), threading.Event())
    assert cluster.events == 256 and len(sent) == 1  # the period never came: the final sync


def test_a_rebase_node_gets_rows_and_mlps_and_only_then_do_the_mlps_learn():
    stream = small_stream()
    torch.manual_seed(0)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    frozen = dense_state(model)
    sent: list[tuple[dict, dict | None]] = []
    period: dict[str, float | None] = {"s": None}  # the node's start-up policy

    def node_period():
        if period["s"] is not None and period["s"] < 0:
            raise ConnectionRefusedError("node restarting")
        return period["s"]

    cluster = DeltaSyncCluster(
        model, lambda deltas, _, dense: sent.append((deltas, dense)), ClusterConfig(), node_period
    )
    batches = iter(stream)
    assert not cluster.poll_policy() and not cluster.policy_read  # not told how: it waits
    period["s"] = 0.0
    assert cluster.poll_policy() and cluster.period_s == ClusterConfig().sync_period_s
    cluster.learn(next(batches))
    assert all(torch.equal(v, frozen[n]) for n, v in dense_state(model).items())  # rows only
    cluster.sync()
    assert sent[-1][1] is None and cluster.syncs == 1
    period["s"] = 1800.0
    assert cluster.poll_policy() and cluster.period_s == 1800.0
    cluster.learn(next(batches))
    learnt = dense_state(model)
    assert any(not torch.equal(v, frozen[n]) for n, v in learnt.items())  # the MLPs learn now
    rows = cluster.sync()
    deltas, dense = sent[-1]
    assert dense is not None and cluster.rebases == 1 and rows > 0
    assert set(dense) == set(learnt)
    assert all(torch.equal(torch.tensor(dense[n]), v) for n, v in learnt.items())
    dim = model.config.embedding_dim
    mlp_bytes = sum(4 * v.numel() for v in learnt.values())
    assert cluster.bytes_sent - cluster.rows_sent * (8 + 4 * dim) == mlp_bytes
    period["s"] = -1.0  # the node does not answer: the last period known stays
    assert not cluster.poll_policy() and cluster.period_s == 1800.0


def test_a_rebase_is_announced_before_its_rows_travel_and_names_its_snapshot():
    stream = small_stream()
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    calls: list[tuple] = []  # ("announce", id, at) and ("send", stamp, dense)
    refuse = False

    def announce(snapshot, at):
        if refuse:
            raise ConnectionRefusedError("node restarting")
        calls.append(("announce", snapshot, at))

    period = {"s": 0.0}
    cluster = DeltaSyncCluster(
        model,
        lambda deltas, stamp, dense: calls.append(("send", stamp, dense)),
        ClusterConfig(),
        lambda: period["s"],
        announce,
    )
    batches = iter(stream)
    cluster.poll_policy()
    cluster.learn(next(batches))
    cluster.sync()  # a delta sync: nothing is carried, nothing announced
    assert [c[0] for c in calls] == ["send"] and calls[0][1].snapshot is None
    period["s"] = 1800.0
    cluster.poll_policy()
    for _ in range(2):
        cluster.learn(next(batches))
        cluster.sync()
    (_, first, at), (_, stamp, dense), (_, second, _), (_, stamp2, _) = calls[1:]
    assert dense is not None and stamp.snapshot == first and stamp.created_at == at
    assert stamp2.snapshot == second > first  # each rebase its own, increasing
    refuse = True
    cluster.learn(next(batches))
    assert cluster.sync() > 0  # the rebase goes on without its announce: the node overwrites
    assert calls[-1][0] == "send" and calls[-1][1].snapshot is None


def test_run_rebases_every_rebase_period_and_reads_the_policy_every_sync_period():
    stream = small_stream(num_events=4096)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    log: list[tuple[str, float, dict | None]] = []  # ("poll" | "send", when, the MLPs sent)

    def node_period():
        log.append(("poll", time.monotonic(), None))
        return 0.4

    cluster = DeltaSyncCluster(
        model,
        lambda deltas, _, dense: log.append(("send", time.monotonic(), dense)),
        ClusterConfig(0.1, qps=4096 / 1.5, label_delay_s=0),
        node_period,
    )
    cluster.run(iter(stream), threading.Event())
    sends = [i for i, (kind, _, _) in enumerate(log) if kind == "send"]
    assert cluster.rebases == len(sends) >= 3 and cluster.syncs == 0  # >= 1.5 s, the last one
    assert all(log[i][2] is not None for i in sends)  # rows and MLPs, every time
    # each rebase but the end of the stream's follows the policy read that decided it, and
    # those reads are a rebase period apart (a margin for the callback's own delay)
    decided = [log[i - 1][1] for i in sends[:-1]]
    assert all(log[i - 1][0] == "poll" for i in sends[:-1])
    assert all(b - a >= 0.4 - 0.05 for a, b in zip(decided, decided[1:], strict=False))
    assert len(log) - len(sends) > len(sends)  # the policy is read more often than it rebases


def test_a_cluster_started_before_its_node_reads_its_policy_without_waiting_a_period(
    monkeypatch, caplog
):
    monkeypatch.setattr(delta_cluster, "POLICY_RETRY_S", 0.05)
    stream = small_stream(num_events=1024)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    polls: list[tuple[float, str]] = []  # (when, what the node answered)

    def node_period():
        answer = ("down", "start-up", "start-up", "0")[min(len(polls), 3)]
        polls.append((time.monotonic(), answer))
        if answer == "down":
            raise ConnectionRefusedError("no socket yet")
        return None if answer == "start-up" else 0.0

    cluster = DeltaSyncCluster(
        model,
        lambda deltas, _, dense: None,
        ClusterConfig(60.0, qps=1024 / 0.6, label_delay_s=0),
        node_period,
    )
    started = time.monotonic()
    with caplog.at_level(logging.DEBUG, logger="nodeworker.delta_cluster"):
        cluster.run(iter(stream), threading.Event())
    # read within the stream's 0.6 s, not at its end nor a 60 s sync period later
    assert [a for _, a in polls[:4]] == ["down", "start-up", "start-up", "0"]
    assert polls[3][0] - started < 0.5 and cluster.policy_read
    assert len(polls) == 4  # then once a sync period: none more in the stream
    waiting = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert [r.levelno for r in waiting] == [logging.INFO, logging.DEBUG, logging.DEBUG]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_shipment_lands_its_transfer_time_after_its_snapshot_and_the_cluster_learns_on():
    stream = small_stream()
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    sent: list[tuple[float, SyncStamp, dict]] = []
    down = False

    def send(deltas, stamp, dense):
        if down:
            raise ConnectionRefusedError("node restarting")
        sent.append((time.time(), stamp, deltas))

    cluster = DeltaSyncCluster(model, send, ClusterConfig(transfer_s=0.3))
    batches = iter(stream)
    cluster.learn(next(batches))
    assert cluster.sync() == 0 and cluster.in_flight is not None and not sent  # on the wire
    on_the_wire = cluster.in_flight
    assert cluster.land() == 0 and not sent  # not yet
    cluster.learn(next(batches))  # the cluster learns on meanwhile
    assert cluster.sync() == 0 and cluster.in_flight is on_the_wire  # the link is busy
    time.sleep(0.3)
    first = cluster.in_flight.deltas
    assert cluster.land() > 0 and cluster.in_flight is None and cluster.syncs == 1
    landed, stamp, deltas = sent[0]
    assert deltas == first and landed - stamp.created_at >= 0.3
    # what it learnt while they travelled is dirty: the next sync ships it, and a failed send
    # keeps it dirty
    down = True
    cluster.sync()
    time.sleep(0.3)
    assert cluster.land() == 0 and cluster.failed_syncs == 1 and cluster.in_flight is None
    down = False
    cluster.sync()
    time.sleep(0.3)
    assert cluster.land() > 0 and len(sent) == 2
    with pytest.raises(ValueError, match="transfer_s"):
        ClusterConfig(transfer_s=3601)


def test_run_takes_no_snapshot_while_one_is_on_the_wire_and_lands_the_last_one():
    stream = small_stream(num_events=2048)
    model = DLRM(DLRMConfig.from_schema(stream.schema))
    sent: list[tuple[float, SyncStamp]] = []
    cluster = DeltaSyncCluster(
        model,
        lambda deltas, stamp, dense: sent.append((time.time(), stamp)),
        ClusterConfig(0.1, qps=2048 / 1.2, label_delay_s=0, transfer_s=0.35),
    )
    cluster.run(iter(stream), threading.Event())
    assert cluster.in_flight is None and cluster.events == 2048 and len(sent) >= 2
    assert all(landed - stamp.created_at >= 0.35 for landed, stamp in sent)
    snapshots = [stamp.created_at for _, stamp in sent]
    assert all(b - a >= 0.35 for a, b in zip(snapshots, snapshots[1:], strict=False))


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


def test_replay_skips_the_pretraining_events(shared_data):
    stream = small_stream(num_events=1000)
    whole = list(iter(stream))
    for skip in (0, 1, 127, 128, 300, 999):
        batches = list(open_source("synthetic:num_events=1000,batch_size=128,user_rows=500", 0,
                                   skip)[0])  # fmt: skip
        ids = torch.cat([b.request_ids for b in batches])
        assert ids.tolist() == list(range(skip, 1000))
        first = next(b for b in whole if int(b.request_ids[-1]) >= skip)
        row = skip - int(first.request_ids[0])
        assert batches[0].values[0][0] == first.values[0][row]  # the same event, not a copy
    assert list(open_source("synthetic:num_events=1000", 0, 1000)[0]) == []
    with pytest.raises(ValueError, match=">= 0"):
        list(open_source("synthetic", 0, -1)[0])
    path = shared_data / "criteo_kaggle_head10k" / "train_head10k.txt"
    full = torch.cat([b.labels for b in open_source(f"criteo:{path}", 0)[0]])
    rest = torch.cat([b.labels for b in open_source(f"criteo:{path}", 0, 1500)[0]])
    assert torch.equal(rest, full[1500:])


def test_demo_nodes_and_cluster_replay_after_the_pretraining(tmp_path):
    args = argparse.Namespace(host="127.0.0.1", port=8000, qps=50.0, sync_period=180.0, seed=0,
                              pretrain_events=5000, rebase_period=1800.0,
                              transfer=60.0)  # fmt: skip
    tokens = {name: "t" for name in demo.NODES}
    children = demo._children(args, "synthetic", tokens, tmp_path, {})
    replaying = [c for c in children if c.name in (*demo.NODES, *demo.CLUSTERS)]
    assert len(replaying) == 4
    for cluster, node in demo.CLUSTERS.items():
        argv = next(c.argv for c in children if c.name == cluster)
        socket = tmp_path / f"node-{node}" / "control.sock"
        assert argv[argv.index("--node-socket") + 1] == str(socket)
        assert argv[argv.index("--transfer") + 1] == "60.0"
    for child in replaying:
        i = child.argv.index("--skip-events")
        assert child.argv[i + 1] == "5000"


def test_cluster_run_refuses_a_transfer_out_of_bounds_in_one_line(tmp_path, capsys):
    from controlplane.cli import main

    argv = ["cluster", "run", "--replay", "synthetic:num_events=1000", "--checkpoint",
            str(tmp_path / "base.ckpt"), "--node-socket",
            str(tmp_path / "control.sock")]  # fmt: skip
    for bad in ("-1", "3601", "nan"):
        with pytest.raises(SystemExit, match=r"^liveupdate cluster run: transfer_s must be in"):
            main([*argv, "--transfer", bad])
