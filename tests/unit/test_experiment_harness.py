"""The replay harness: progressive validation, determinism, and freshness on drift."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlrm_core.experiment.config import ExperimentConfig, LinkConfig, LiveUpdateParams
from dlrm_core.experiment.harness import Audit, ProgressiveViolation, run_experiment
from dlrm_core.experiment.report import build_results
from dlrm_core.experiment.strategies import Stale
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

from .test_experiment_accounting import tiny_model


def small_run(strategies, events=12_000, seed=0, **kw):  # noqa: ANN001, ANN003, ANN201
    stream = SyntheticStream(
        SyntheticConfig(seed=seed, num_events=events, batch_size=128, events_per_second=10,
                        user_rows=2_000, item_rows=2_000, drift_per_hour=6.0)
    )  # fmt: skip
    config = ExperimentConfig(
        seed=seed, qps=10.0, window_s=300.0, label_delay_s=30.0, sync_period_s=120.0,
        pretrain_fraction=0.3, lr_dense=0.05, lr_sparse=0.05, strategies=strategies,
        link=LinkConfig(bandwidth_gbps=1.0, target_table_bytes=None),
        live=LiveUpdateParams(lr_a=0.2, prune_age_s=600.0), audit=True, **kw,
    )  # fmt: skip
    return run_experiment(stream.schema, lambda: iter(stream), events, config)


def test_progressive_validation_never_scores_a_learnt_event() -> None:
    run = small_run(("stale", "full_sync", "delta_sync", "prioritized_delta", "liveupdate"))
    batches = run.eval_events // 128
    assert run.audit.violations == 0
    assert run.audit.checks >= 5 * batches  # every strategy, every scored batch
    # the syncs and LiveUpdate did learn during the replay (the check was not vacuous)
    assert run.cluster.learnt_until_id > run.pretrain_events
    for name in ("delta_sync", "liveupdate"):
        assert run.strategies[name].learnt_until_id > run.pretrain_events
    assert run.strategies["stale"].learnt_until_id == run.pretrain_events - 1


def test_the_audit_catches_a_model_that_learnt_the_scored_event() -> None:
    from dlrm_core.batch import SparseBatch

    stale = Stale(tiny_model(), 0.0, learnt_until_id=10)
    batch = SparseBatch.from_ids(
        ("a", "b"), [[[1], [2]], [[1], [2]]], torch.zeros(2, 2), torch.zeros(2),
        request_ids=torch.tensor([10, 11]),
    )  # fmt: skip
    audit = Audit()
    with pytest.raises(ProgressiveViolation):
        audit.check(stale, batch)
    assert audit.violations == 1
    audit.check(stale, dataclasses.replace(batch, request_ids=torch.tensor([11, 12])))
    assert audit.checks == 2 and audit.violations == 1


def test_same_seed_same_results() -> None:
    names = ("delta_sync", "liveupdate")
    a = build_results(small_run(names, events=6_000), {"name": "synthetic"})
    b = build_results(small_run(names, events=6_000), {"name": "synthetic"})
    for name in names:
        for key in ("auc_per_window", "bytes_moved", "peak_memory_overhead_pct"):
            assert a["strategies"][name][key] == b["strategies"][name][key]
    c = build_results(small_run(names, events=6_000, seed=1), {"name": "synthetic"})
    assert (
        c["strategies"]["liveupdate"]["auc_per_window"]
        != (a["strategies"]["liveupdate"]["auc_per_window"])
    )


def test_liveupdate_beats_stale_on_a_drifting_stream() -> None:
    run = build_results(small_run(("stale", "liveupdate"), events=24_000), {"name": "s"})
    live, stale = run["strategies"]["liveupdate"], run["strategies"]["stale"]
    assert live["mean_auc"] > stale["mean_auc"] + 0.02
    assert live["pooled_auc"] > stale["pooled_auc"]
    assert live["mean_staleness_s"] < stale["mean_staleness_s"]
