"""A fed LiveUpdate node's memory while a payload lands: the piece it holds is reserved from its
budget (liveupdate.piece_bytes), so its trainer, its anchors and the piece stay within the
budget at every sample, measured by walking its tensors."""

from __future__ import annotations

import copy

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import Link, SimulatedCluster
from dlrm_core.experiment.config import ExperimentConfig, LinkConfig, LiveUpdateParams
from dlrm_core.experiment.harness import _make_liveupdate
from dlrm_core.experiment.liveupdate import FedLiveUpdate, Hybrid, LiveUpdateDense, budget_bytes
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.trainer import FullTrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = (2000, 1000)


def batch(k: int, gen: torch.Generator) -> SparseBatch:
    """64 events over many ids: the cluster changes more rows than the node's budget holds."""
    ids = [[[int(i)] for i in torch.randint(0, n, (64,), generator=gen)] for n in ROWS]
    return SparseBatch.from_ids(
        ("a", "b"), ids, torch.randn(64, 2, generator=gen),
        torch.randint(0, 2, (64,), generator=gen).float(), timestamps=torch.full((64,), float(k)),
        request_ids=torch.arange(64 * k, 64 * k + 64),
    )  # fmt: skip


@pytest.mark.parametrize("kind", [Hybrid, LiveUpdateDense])
def test_a_fed_node_stays_within_its_budget_while_a_payload_lands(kind: type) -> None:
    torch.manual_seed(0)
    base = DLRM(DLRMConfig(("a", "b"), ROWS, 2, 8, (8, 8), (8, 1)))
    cluster = SimulatedCluster(copy.deepcopy(base), FullTrainConfig(), 0.0, -1)
    link = Link(LinkConfig(bandwidth_gbps=8e-6, target_table_bytes=None), 1.0)  # 1000 B/s
    params = LiveUpdateParams(budget_pct=10.0, r_max=4, initial_rank=2, prune_age_s=None,
                              rebase_period_s=10.0)  # fmt: skip
    config = ExperimentConfig(sync_period_s=10.0, live=params)
    node = _make_liveupdate(kind, copy.deepcopy(base), cluster, link, config, {"a": 1.0, "b": 1.0},
                            0.0)  # fmt: skip
    assert isinstance(node, FedLiveUpdate)
    gen = torch.Generator().manual_seed(1)
    for k in range(9):
        events = batch(k, gen)
        cluster.train(events, float(k))
        node.on_ready(events, float(k))
    node.advance(10.0)
    (lands, payload, _), = node.in_flight  # fmt: skip
    node.advance(lands)
    acc, budget = node.accounting, budget_bytes(base, params)
    assert 0 < acc.peak_measured_bytes <= budget, (acc.peak_measured_bytes, budget)
    assert 0 < acc.peak_memory_overhead_bytes <= budget
    assert acc.syncs_landed == 1 and payload.bytes > node.piece_bytes  # it landed in pieces
