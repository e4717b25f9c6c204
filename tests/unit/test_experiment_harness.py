"""The replay harness: the model-level leak audit, determinism, and freshness on drift."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.config import ExperimentConfig, LinkConfig, LiveUpdateParams
from dlrm_core.experiment.harness import make_strategies, run_experiment
from dlrm_core.experiment.results import build_results
from dlrm_core.experiment.run_summary import summarise_run
from dlrm_core.experiment.strategies import Stale
from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

ALL = ("stale", "oracle", "full_sync", "delta_sync", "prioritized_delta", "liveupdate",
       "liveupdate_dense", "hybrid")  # fmt: skip


def small_stream(events: int, seed: int = 0) -> SyntheticStream:
    """A small drifting synthetic stream (2,000-row tables, 10 events/s, 6 rad/h)."""
    return SyntheticStream(
        SyntheticConfig(seed=seed, num_events=events, batch_size=128, events_per_second=10,
                        user_rows=2_000, item_rows=2_000, drift_per_hour=6.0)
    )  # fmt: skip


def small_config(strategies, seed=0, **kw):  # noqa: ANN001, ANN003, ANN201
    return ExperimentConfig(
        seed=seed, qps=10.0, window_s=300.0, fine_window_s=60.0, label_delay_s=30.0,
        sync_period_s=120.0, pretrain_fraction=0.3, lr_dense=0.05, lr_sparse=0.05,
        strategies=strategies, link=LinkConfig(bandwidth_gbps=1.0, target_table_bytes=None),
        live=LiveUpdateParams(lr_a=0.2, prune_age_s=600.0), **kw,
    )  # fmt: skip


def small_run(strategies, events=12_000, seed=0, make=None, **kw):  # noqa: ANN001, ANN003, ANN201
    stream = small_stream(events, seed=seed)
    config = small_config(strategies, seed, **kw)
    return run_experiment(stream.schema, lambda: iter(stream), events, config, make=make)


class Peeking(Stale):
    """Built to leak: trains on each batch's labels just before scoring it."""

    name = "peeking"

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.trainer = FullSparseTrainer(self.model, FullTrainConfig())

    def score(self, batch: SparseBatch) -> torch.Tensor:
        self.trainer.step(batch)
        return super().score(batch)


def test_the_leak_audit_passes_every_strategy_and_changed_labels() -> None:
    run = small_run(ALL, events=6_000, audit=True)
    assert run.audit is not None
    assert run.audit.labels_changed > 100  # the permutation did hide labels
    assert set(run.audit.strategies) == set(ALL)
    assert run.audit.passed, run.audit.as_dict()
    # the learners did learn during the replay (identical scores were not a frozen model's)
    assert run.cluster.learnt_until_id > run.pretrain_events
    for name in ("delta_sync", "liveupdate", "hybrid"):
        assert run.strategies[name].learnt_until_id > run.pretrain_events


def test_the_leak_audit_fails_a_strategy_built_to_peek() -> None:
    def make(base, cluster, config, *rest):  # noqa: ANN001, ANN002, ANN202
        out = make_strategies(base, cluster, config, *rest)
        out["peeking"] = Peeking(
            make_strategies(base, cluster, config, *rest)["stale"].model, 0.0, -1
        )
        return out

    run = small_run(("stale", "liveupdate"), events=4_000, make=make, audit=True)
    assert run.audit is not None and not run.audit.passed
    assert run.audit.leaking() == ["peeking"]
    peek = run.audit.strategies["peeking"]
    assert peek.mismatched > peek.events // 2 and peek.max_abs_diff > 1e-4


def test_same_seed_same_results() -> None:
    names = ("delta_sync", "liveupdate")
    a = build_results([summarise_run(small_run(names, events=3_000))], {"name": "synthetic"})
    b = build_results([summarise_run(small_run(names, events=3_000))], {"name": "synthetic"})
    for name in names:
        for key in ("auc_per_window", "bytes_moved", "peak_memory_overhead_pct"):
            assert a["strategies"][name][key] == b["strategies"][name][key]
    c = build_results(
        [summarise_run(small_run(names, events=3_000, seed=1))], {"name": "synthetic"}
    )
    assert (
        c["strategies"]["liveupdate"]["auc_per_window"]
        != (a["strategies"]["liveupdate"]["auc_per_window"])
    )


def test_liveupdate_beats_stale_on_a_drifting_stream() -> None:
    run = build_results(
        [summarise_run(small_run(("stale", "liveupdate"), events=24_000))], {"name": "s"}
    )
    live, stale = run["strategies"]["liveupdate"], run["strategies"]["stale"]
    assert live["mean_auc"] > stale["mean_auc"] + 0.02
    assert live["pooled_auc"] > stale["pooled_auc"]
    assert live["mean_staleness_s"] < stale["mean_staleness_s"]


def test_a_memoised_base_gives_the_numbers_of_a_fresh_one() -> None:
    from dlrm_core.experiment.pretrain import PRETRAINED

    stream = small_stream(3_000, seed=0)

    def open_stream():  # noqa: ANN202
        return iter(stream)

    config = small_config(("delta_sync", "liveupdate"))
    first = summarise_run(run_experiment(stream.schema, open_stream, 3_000, config))
    hits = PRETRAINED.hits
    again = summarise_run(run_experiment(stream.schema, open_stream, 3_000, config))
    assert PRETRAINED.hits == hits + 1  # the same stream, seed and head: trained once
    fresh = summarise_run(run_experiment(stream.schema, lambda: iter(stream), 3_000, config))
    assert PRETRAINED.hits == hits + 1  # another stream object: trained again
    for name in ("delta_sync", "liveupdate"):
        for key in ("auc_per_window", "bytes_moved", "pooled_auc"):
            assert (
                first.strategies[name][key]
                == again.strategies[name][key]
                == (fresh.strategies[name][key])
            ), (name, key)


def test_a_bundle_gives_each_configuration_the_numbers_of_its_own_run() -> None:
    from dlrm_core.experiment.fleet_config import FleetConfig
    from dlrm_core.experiment.harness import run_bundle

    stream = small_stream(4_000, seed=0)
    main = small_config(("stale", "oracle", "delta_sync", "liveupdate", "hybrid"),
                        fleet=FleetConfig(nodes=2))  # fmt: skip
    configs = [main] + [
        dataclasses.replace(main, sync_period_s=p, strategies=("delta_sync", "hybrid"))
        for p in (60.0, 300.0)
    ] + [dataclasses.replace(main, fleet=FleetConfig(nodes=3, routing="random"))]  # fmt: skip
    bundled = run_bundle(stream.schema, lambda: iter(stream), 4_000, configs)
    for config, run in zip(configs, bundled, strict=True):
        alone = summarise_run(run_experiment(stream.schema, lambda: iter(stream), 4_000, config))
        together = summarise_run(run)
        assert list(together.strategies) == list(config.strategies)
        for name in config.strategies:
            for key in (
                "auc_per_fine_window",
                "pooled_auc",
                "bytes_moved",
                "syncs_landed",
                "mean_staleness_s",
                "peak_measured_memory_pct",
                "rank_per_window",
            ):
                assert together.strategies[name][key] == alone.strategies[name][key], (name, key)
        assert together.lowrank == alone.lowrank and together.cluster_steps == alone.cluster_steps
    # one replay, one cluster: its steps are counted once, not once per configuration
    assert len({id(run.cluster) for run in bundled}) == 1


def test_a_bundle_refuses_configurations_of_different_replays() -> None:
    from dlrm_core.experiment.harness import run_bundle

    stream = SyntheticStream(SyntheticConfig(seed=0, num_events=1_000, batch_size=128))
    config = small_config(("stale",))
    other = dataclasses.replace(config, label_delay_s=10.0)
    with pytest.raises(ValueError, match="differ only in PER_STRATEGY"):
        run_bundle(stream.schema, lambda: iter(stream), 1_000, [config, other])


def test_the_cluster_trains_on_from_where_pretraining_stopped() -> None:
    """The cluster's first step equals pretraining's next step, optimizer state included (a
    cluster restarting Adagrad took full-lr steps and fell below the base for its first
    minutes: delta_sync at a slow link served that dip for hours, below stale)."""
    from dlrm_core.experiment.harness import _cluster
    from dlrm_core.experiment.pretrain import build_model, pretrain
    from dlrm_core.experiment.stream import first_eval_batch, head_batches

    events = 3_000
    stream = SyntheticStream(
        SyntheticConfig(seed=0, num_events=events, batch_size=128, events_per_second=10,
                        user_rows=2_000, item_rows=2_000)
    )  # fmt: skip
    config = dataclasses.replace(small_config(("delta_sync",)), optimizer="adagrad")
    pre = pretrain(stream.schema, lambda: iter(stream), events, config)
    nxt = first_eval_batch(lambda: iter(stream), config.qps, pre.events)
    cluster = _cluster(pre)
    cluster.train(nxt, 0.0)

    reference = build_model(stream.schema, config)
    trainer = FullSparseTrainer(
        reference, FullTrainConfig("adagrad", config.lr_dense, config.lr_sparse)
    )
    for batch in [*head_batches(lambda: iter(stream), config.qps, pre.events), nxt]:
        trainer.step(batch)
    for (name, mine), (_, want) in zip(cluster.model.state_dict().items(),
                                       reference.state_dict().items(), strict=True):  # fmt: skip
        assert torch.equal(mine, want), name


def test_the_low_rank_probe_equals_a_whole_table_diff() -> None:
    """The probe reads only the rows the cluster's steps touched; the same (rows, r95, r99)
    as diffing whole tables period by period."""
    from dlrm_core.experiment.harness import _cluster
    from dlrm_core.experiment.lowrank import LowRankProbe
    from dlrm_core.experiment.pretrain import pretrain
    from dlrm_core.experiment.stream import eval_batches

    events = 4_000
    stream = SyntheticStream(
        SyntheticConfig(seed=1, num_events=events, batch_size=128, events_per_second=10,
                        user_rows=2_000, item_rows=2_000)
    )  # fmt: skip
    config = small_config(("delta_sync",))
    pre = pretrain(stream.schema, lambda: iter(stream), events, config)
    cluster = _cluster(pre)
    batches = list(eval_batches(lambda: iter(stream), config.qps, pre.events))
    start = float(batches[0].timestamps[0])
    probe = LowRankProbe(cluster, 60.0, start)
    tables = cluster.model.sparse_arch
    snap = {n: tables.table(n).weight.detach().clone() for n in tables.feature_names}
    want: dict[str, list[tuple[int, int, int]]] = {}
    next_s = start + 60.0
    for batch in batches:
        now = float(batch.timestamps[0])
        if now >= next_s:
            next_s += 60.0 * (int((now - next_s) // 60.0) + 1)
            for name, old in snap.items():
                delta = tables.table(name).weight.detach() - old
                rows = torch.nonzero(delta.abs().sum(1)).squeeze(1)
                snap[name] = tables.table(name).weight.detach().clone()
                if rows.numel() >= 2:
                    share = torch.linalg.svdvals(delta[rows].double()).pow(2).cumsum(0)
                    share /= share[-1].clone()
                    r95, r99 = (int((share < q - 1e-9).sum()) + 1 for q in (0.95, 0.99))
                    want.setdefault(name, []).append((int(rows.numel()), r95, r99))
        probe.advance(now)
        cluster.train(batch, now)
    assert probe.ranks == want and sum(len(v) for v in want.values()) >= 8


def test_a_run_split_into_parts_merges_to_the_numbers_of_the_whole_run() -> None:
    from dlrm_core.experiment.fleet_config import FleetConfig
    from dlrm_core.experiment.plan import BUNDLE_MODEL_BYTES, split
    from dlrm_core.experiment.run_summary import merge_parts

    stream = small_stream(4_000, seed=0)
    config = small_config(("stale", "oracle", "delta_sync", "liveupdate", "hybrid"),
                          fleet=FleetConfig(nodes=4))  # fmt: skip
    # the bound holds 10 copies: 3 + 1 period + 1 + 1 + 4 for the first part, the hybrid's 4 apart
    parts = split(config, BUNDLE_MODEL_BYTES // 10)
    assert [p.strategies for p in parts] == [("stale", "oracle", "delta_sync", "liveupdate"),
                                             ("hybrid",)]  # fmt: skip
    assert split(config, BUNDLE_MODEL_BYTES // 14) == [config]

    def run(c: ExperimentConfig):  # noqa: ANN202
        return summarise_run(run_experiment(stream.schema, lambda: iter(stream), 4_000, c))

    whole = run(config)
    merged = merge_parts([run(p) for p in parts], config)
    assert merged.config == config and list(merged.strategies) == list(config.strategies)
    for name, res in whole.strategies.items():
        keys = ("auc_per_fine_window", "pooled_auc", "bytes_moved", "cpu_seconds",
                "mean_gain_vs_delta_sync_pct", "gain_vs_delta_sync_pct_per_window")  # fmt: skip
        for key in keys:
            if key == "cpu_seconds":  # measured: equal work, not equal time
                assert (res[key] > 0) == (merged.strategies[name][key] > 0), name
                continue
            assert merged.strategies[name][key] == res[key], (name, key)
    assert merged.budgets == whole.budgets and len(merged.live_memory) == 4
    with pytest.raises(ValueError, match="seed"):
        merge_parts([run(parts[1])], dataclasses.replace(config, seed=1))
