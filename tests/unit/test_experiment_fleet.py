"""The fleet: routing, nodes that learn only their share, fleet totals by hand."""

from __future__ import annotations

import copy

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import Link, SimulatedCluster
from dlrm_core.experiment.config import LinkConfig, LiveUpdateParams
from dlrm_core.experiment.fleet import LocalFleet, Router, fleet_totals
from dlrm_core.experiment.fleet_config import FleetConfig
from dlrm_core.experiment.liveupdate import LiveUpdate
from dlrm_core.experiment.strategies import DeltaSync
from dlrm_core.schema import SparseFeatureSpec, StreamSchema
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
from dlrm_core.trainer import FullTrainConfig

from .test_experiment_accounting import tiny_model


def schema() -> StreamSchema:
    return StreamSchema((SparseFeatureSpec("a", 100), SparseFeatureSpec("user_b", 50)), ("x", "y"))


def batch(users: list[int], first_id: int = 0, t: float = 0.0) -> SparseBatch:
    n = len(users)
    return SparseBatch.from_ids(
        ("a", "user_b"), [[[i % 100] for i in range(n)], [[u] for u in users]],
        torch.randn(n, 2, generator=torch.Generator().manual_seed(first_id)),
        torch.tensor([float(i % 2) for i in range(n)]),
        timestamps=torch.full((n,), t), request_ids=torch.arange(first_id, first_id + n),
    )  # fmt: skip


def test_sticky_routing_keeps_a_user_on_one_node_and_random_spreads_requests() -> None:
    sticky = Router(FleetConfig(nodes=4), schema(), seed=0)
    assert sticky.feature == "user_b"  # found by name
    users = [u % 50 for u in range(400)]
    nodes = sticky.route(batch(users))
    for u in range(50):
        assert len(set(nodes[torch.tensor(users) == u].tolist())) == 1
    assert set(nodes.tolist()) == {0, 1, 2, 3}
    rnd = Router(FleetConfig(nodes=4, routing="random"), schema(), seed=0)
    a, b = rnd.route(batch([7] * 400)), rnd.route(batch([7] * 400))
    assert torch.equal(a, b)  # stateless: every replay routes the same
    counts = torch.bincount(a, minlength=4)
    assert counts.min() > 60  # one user, spread over all nodes


def test_each_node_learns_only_its_share_and_costs_add_up() -> None:
    params = LiveUpdateParams(budget_pct=20.0, r_max=4, initial_rank=2, prune_age_s=None)
    nodes = [
        LiveUpdate(tiny_model(), params, {"a": 2000, "b": 1000}, 0.0, -1, seed=0) for _ in range(2)
    ]
    # the tiny model's tables are named a and b: route on b
    router = Router(FleetConfig(nodes=2, route_feature="b"), _ab_schema(), seed=0)
    fleet = LocalFleet(nodes, router, multicast=False)
    b = _ab_batch(64)
    share = torch.bincount(router.route(b), minlength=2)
    assert share.min() > 0
    scores = fleet.score(b)
    for k, pos in router.split(b):
        assert torch.equal(scores[pos], nodes[k].score(b.select(pos)))
    fleet.on_ready(b, 1.0)
    assert [n.trainer.stats.samples for n in nodes] == share.tolist()
    acc = fleet.accounting
    assert acc.node_cpu_seconds == sum(n.accounting.node_cpu_seconds for n in nodes) > 0
    assert acc.memory_overhead_bytes == sum(n.accounting.memory_overhead_bytes for n in nodes)
    totals = fleet_totals(fleet, FleetConfig(nodes=2))
    assert totals.nodes == 2 and totals.bytes_moved == 0
    assert totals.memory_peak_bytes == sum(n.accounting.peak_measured_bytes for n in nodes) > 0


def _ab_schema() -> StreamSchema:
    return StreamSchema((SparseFeatureSpec("a", 100), SparseFeatureSpec("b", 50)), ("x", "y"))


def _ab_batch(n: int) -> SparseBatch:
    gen = torch.Generator().manual_seed(3)
    ids = [
        [[int(i)] for i in torch.randint(0, 100, (n,), generator=gen)],
        [[i % 50] for i in range(n)],
    ]
    return SparseBatch.from_ids(
        ("a", "b"), ids, torch.randn(n, 2, generator=gen),
        torch.randint(0, 2, (n,), generator=gen).float(), timestamps=torch.zeros(n),
        request_ids=torch.arange(n),
    )  # fmt: skip


def test_a_sync_costs_n_transfers_or_one_with_multicast_and_the_cluster_once() -> None:
    base = tiny_model()
    cluster = SimulatedCluster(copy.deepcopy(base), FullTrainConfig(), 0.0, -1)
    link = Link(LinkConfig(target_table_bytes=None), 1.0)
    delta = DeltaSync(copy.deepcopy(base), cluster, link, 10.0, 0.0)
    acc = delta.accounting
    acc.bytes_moved, acc.bytes_projected = 1000, 1000.0
    acc.cluster_cpu_seconds, acc.node_cpu_seconds = 2.0, 0.5
    acc.set_measured(100)
    four = fleet_totals(delta, FleetConfig(nodes=4))
    assert (four.bytes_moved, four.cpu_seconds, four.memory_peak_bytes) == (4000, 4.0, 400)
    assert four.node_cpu_seconds == 0.5 and four.node_memory_peak_bytes == 100
    multicast = fleet_totals(delta, FleetConfig(nodes=4, multicast=True))
    assert multicast.bytes_moved == 1000 and multicast.cpu_seconds == 4.0


def test_a_shared_router_splits_a_batch_once_for_every_fleet_and_phase() -> None:
    from dlrm_core.experiment.fleet import shared_router

    stream = SyntheticStream(SyntheticConfig(seed=0, num_events=512, batch_size=128))
    batch, other = list(stream)[:2]
    fleet = FleetConfig(nodes=3, routing="random")
    router = shared_router(fleet, stream.schema, 7)
    assert shared_router(fleet, stream.schema, 7) is router
    assert shared_router(fleet, stream.schema, 8) is not router
    parts = router.parts(batch)
    assert router.parts(batch) is parts and router.parts(other) is not parts
    assert sum(len(p) for _, _, p in parts) == len(batch)
    for node, pos, part in parts:
        assert torch.equal(part.request_ids, batch.request_ids[pos])
        assert bool((router.route(part) == node).all())
