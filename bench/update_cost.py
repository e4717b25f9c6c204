"""Update cost: CPU per labelled event of LiveUpdate's update path against the cluster's.

For each model, on the same batches, interleaved round by round in one process (thread CPU time):
  liveupdate     the node's whole update path: the label join (LabelJoin.add_served, pop_ready),
                 LiveTrainer steps (admission, forward, backward, row-wise Adagrad + Adam, one
                 replay step per batch), rank control (make_room, prune + adapt every 50 steps),
                 publish every 10 steps, and for every new version the inference side's build
                 (ServingDelta.from_factors) and the write of its folded rows into the base; the
                 batches come as serving left them, the bottom MLP's output kept (ServedParts);
  liveupdate_recompute  the same on the bare batches (the bottom MLP recomputed per step);
  cluster        the experiment's delta_sync: SimulatedCluster.train (FullSparseTrainer:
                 torch.optim Adagrad on the MLPs, the fused training kernel on the embedding
                 rows), the dirty-row tracking of every step, and every --sync-every steps a
                 snapshot of the changed rows and the MLPs and one node's apply of it
                 (DeltaSync.advance);
  cluster_torch  the same with the cluster's old embedding step (EmbeddingBag's sparse gradients
                 and torch.optim.Adagrad over every table): the reference column.
LiveUpdate's settings are the experiment's defaults (LiveUpdateParams: 2% budget, even split here,
rank 4 in [1, 8], reuse 0); the cluster's are ExperimentConfig's (Adagrad, lr 0.05).
Models: MovieLens-100k (/work/shared/data/movielens_100k, the experiment's model shape), the
Criteo-Kaggle reference DLRM (tables scaled by --criteo-scale: memory; skewed synthetic ids) and
the synthetic stream with 10^6 rows (500k users, 500k items). Goal: liveupdate <= 0.5x cluster.
Per event: the mean of all rounds, which cover whole periods of LiveUpdate's adapt (every 50
steps) and of the cluster's sync, so neither side's periodic work is left out.

    python bench/update_cost.py [--rounds 25] [--reps 12] [--criteo-scale 0.05]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import statistics
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.trainer_throughput import TorchOptimTrainer  # noqa: E402
from bench.workloads import criteo_workload, interleaved, print_table, write_json  # noqa: E402
from dlrm_core.batch import SparseBatch  # noqa: E402
from dlrm_core.experiment.cluster import Link, SimulatedCluster  # noqa: E402
from dlrm_core.experiment.config import ExperimentConfig, LinkConfig  # noqa: E402
from dlrm_core.experiment.data import open_source  # noqa: E402
from dlrm_core.experiment.strategies import DeltaSync  # noqa: E402
from dlrm_core.live_embedding import LiveEmbeddingConfig  # noqa: E402
from dlrm_core.model import DLRM, DLRMConfig  # noqa: E402
from dlrm_core.rank_policy import RankPolicy  # noqa: E402
from dlrm_core.schema import StreamSchema  # noqa: E402
from dlrm_core.serving import ServingDelta  # noqa: E402
from dlrm_core.synthetic import SyntheticConfig  # noqa: E402
from dlrm_core.trainer import FullTrainConfig, LiveTrainer, TrainerConfig  # noqa: E402

DATA = Path("/work/shared/data")
EXPERIMENT = ExperimentConfig()


def movielens(args: argparse.Namespace) -> tuple[DLRMConfig, list[SparseBatch]]:
    source = open_source("movielens", DATA / "movielens_100k", args.batch)
    return _experiment_shape(source.schema), list(itertools.islice(source.open(), args.batches))


def synthetic(args: argparse.Namespace) -> tuple[DLRMConfig, list[SparseBatch]]:
    cfg = SyntheticConfig(
        num_events=args.batches * args.batch,
        batch_size=args.batch,
        user_rows=500_000,
        item_rows=500_000,
    )
    source = open_source("synthetic", None, args.batch, synthetic=cfg)
    return _experiment_shape(source.schema), list(source.open())


def criteo(args: argparse.Namespace) -> tuple[DLRMConfig, list[SparseBatch]]:
    gen = torch.Generator().manual_seed(0)
    workload = criteo_workload(args.criteo_scale, 0.05, gen)
    return workload.config, workload.batches(args.batches, args.batch, gen)


def _experiment_shape(schema: StreamSchema) -> DLRMConfig:
    return DLRMConfig.from_schema(
        schema, EXPERIMENT.embedding_dim, EXPERIMENT.bottom_hidden, EXPERIMENT.top_hidden
    )


class LiveUpdatePath:
    """The node: a LiveTrainer on its model, and the inference side's model that installs
    every version it publishes."""

    def __init__(self, model: DLRM, keep_served: bool) -> None:
        params = EXPERIMENT.live
        config = TrainerConfig(
            live=LiveEmbeddingConfig(rank=params.initial_rank),
            policy=RankPolicy(tau=params.tau, r_min=params.r_min, r_max=params.r_max),
            budget_fraction=params.budget_pct / 100,
            lr_a=params.lr_a,
            lr_b=params.lr_b,
            reuse=params.reuse,
            adapt_every=params.adapt_every,
            publish_every=params.publish_every,
            keep_published=True,  # the bench installs every version from the store
        )
        self.inference = copy.deepcopy(model)
        self.trainer = LiveTrainer(model, config)
        self.installed = -1
        self.delta: ServingDelta | None = None
        self.keep_served = keep_served
        self._served: dict[int, SparseBatch] = {}

    def serve(self, batches: list[SparseBatch]) -> None:
        """With ``keep_served``, each batch as serving leaves it: the bottom MLP's output kept
        with it until its label comes. Not timed: serving computes that output anyway."""
        if self.keep_served:
            self._served = {id(b): self.trainer.score_and_keep(b)[1] for b in batches}

    def update(self, batch: SparseBatch, now: float) -> None:
        self.trainer.join.add_served(self._served.get(id(batch), batch), now)
        self.trainer.train_ready(now)
        version = self.trainer.store.latest()
        if version is not None and version.version != self.installed:
            cfg = self.inference.config
            self.delta = ServingDelta.from_factors(
                version.version, cfg.feature_names, cfg.table_sizes, version.tables
            )
            with torch.no_grad():  # the node's installer writes the folded rows the same way
                for name, patch in version.base_patches.items():
                    if patch.ids.numel():  # the node sends only the tables that folded rows
                        self.inference.sparse_arch.table(name).weight[patch.ids] = patch.rows
            self.installed = version.version


class ClusterPath:
    """The experiment's delta_sync: the cluster trains, one node receives its changed rows."""

    def __init__(self, model: DLRM, sync_period_s: float, torch_step: bool) -> None:
        config = FullTrainConfig(EXPERIMENT.optimizer, EXPERIMENT.lr_dense, EXPERIMENT.lr_sparse)
        self.cluster = SimulatedCluster(copy.deepcopy(model), config, 0.0, -1)
        if torch_step:
            self.cluster.trainer = TorchOptimTrainer(self.cluster.model, config)  # type: ignore[assignment]
        # instant transfers: the bench counts CPU, not time on the wire
        link = Link(LinkConfig(bandwidth_gbps=1e6, target_table_bytes=None), scale=1.0)
        self.sync = DeltaSync(copy.deepcopy(model), self.cluster, link, sync_period_s, 0.0)

    def update(self, batch: SparseBatch, now: float) -> None:
        self.cluster.train(batch, now)
        self.sync.advance(now)


def measure(
    name: str, config: DLRMConfig, batches: list[SparseBatch], args: argparse.Namespace
) -> dict[str, object]:
    torch.manual_seed(0)
    model = DLRM(config)
    step_s = args.batch / EXPERIMENT.qps if EXPERIMENT.qps else 1.0  # the replay clock
    lu = LiveUpdatePath(copy.deepcopy(model), keep_served=True)
    recompute = LiveUpdatePath(copy.deepcopy(model), keep_served=False)
    paths: dict[str, LiveUpdatePath | ClusterPath] = {
        "liveupdate": lu,
        "liveupdate_recompute": recompute,
        "cluster": ClusterPath(model, args.sync_every * step_s, torch_step=False),
        "cluster_torch": ClusterPath(model, args.sync_every * step_s, torch_step=True),
    }

    def runner(path_name: str) -> Callable[[], None]:
        stream: Iterator[int] = itertools.cycle(range(len(batches)))
        clock = itertools.count(1)

        def run() -> None:
            batch = batches[next(stream)]
            paths[path_name].update(batch, next(clock) * step_s)

        return run

    lu.serve(batches)
    runs = {n: runner(n) for n in paths}
    for _ in range(args.warmup):  # LiveUpdate's tables fill, the cluster's state grows
        for run in runs.values():
            run()
    times = interleaved(runs, rounds=args.rounds, reps=args.reps, warmup=0)
    # all the CPU the rounds took: they cover whole adapt and sync periods (main checks), so
    # LiveUpdate's adapts and the cluster's snapshots are in it, as often as they come
    per_event = {n: 1e6 * statistics.fmean(ts) / args.batch for n, ts in times.items()}
    live = lu.trainer
    return {
        "config": name,
        "liveupdate_us_per_event": per_event["liveupdate"],
        "liveupdate_recompute_us_per_event": per_event["liveupdate_recompute"],
        "cluster_us_per_event": per_event["cluster"],
        "cluster_torch_us_per_event": per_event["cluster_torch"],
        "ratio": per_event["liveupdate"] / per_event["cluster"],
        "ratio_vs_torch_cluster": per_event["liveupdate"] / per_event["cluster_torch"],
        "tables": len(config.feature_names),
        "table_rows": sum(config.table_sizes),
        "live_tables": len(live.lives),
        "live_active_rows": sum(lv.num_active for lv in live.lives.values()),
        "live_skipped_steps": live.stats.skipped,
        "rounds_us_per_event": {n: [1e6 * t / args.batch for t in ts] for n, ts in times.items()},
    }


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--batches", type=int, default=48, help="distinct batches, cycled")
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--reps", type=int, default=12)
    parser.add_argument("--warmup", type=int, default=30)
    parser.add_argument("--sync-every", type=int, default=12, help="cluster steps per sync")
    parser.add_argument("--criteo-scale", type=float, default=0.05)
    parser.add_argument("--configs", default="movielens100k,criteo_reference,synthetic_1e6_rows")
    args = parser.parse_args(argv)
    for name in ("batch", "batches", "rounds", "reps", "sync_every"):
        if not 1 <= getattr(args, name) <= 100_000:
            parser.error(f"--{name.replace('_', '-')} must be in [1, 100000]")
    if not 0 < args.criteo_scale <= 1:
        parser.error("--criteo-scale must be in (0, 1]")
    periods = {"LiveUpdate's adapt": EXPERIMENT.live.adapt_every, "sync": args.sync_every}
    for what, every in periods.items():
        if (args.rounds * args.reps) % every:
            parser.error(f"--rounds x --reps must be whole {what} periods of {every} batches")
    torch.set_num_threads(1)
    builders = {
        "movielens100k": movielens,
        "criteo_reference": criteo,
        "synthetic_1e6_rows": synthetic,
    }
    wanted = args.configs.split(",")
    if unknown := [c for c in wanted if c not in builders]:
        parser.error(f"unknown configs {unknown}; choose from {list(builders)}")
    load_before = os.getloadavg()
    results = []
    for name in wanted:
        config, batches = builders[name](args)
        results.append(measure(name, config, batches, args))
    loads = [load_before, os.getloadavg()]
    print_results(args, results, loads)
    payload = {
        "benchmark": "update_cost",
        "args": vars(args),
        "load_average": loads,  # 1, 5 and 15 min, before and after the runs
        "configs": results,
    }
    write_json("update_cost", payload)
    return payload


COLUMNS = {
    "config": "config",
    "liveupdate_us_per_event": "liveupdate",
    "liveupdate_recompute_us_per_event": "recomputing",
    "cluster_us_per_event": "cluster (fused)",
    "cluster_torch_us_per_event": "cluster (torch)",
    "ratio": "ratio",
    "ratio_vs_torch_cluster": "vs torch",
}


def print_results(
    args: argparse.Namespace, results: list[dict[str, object]], loads: list[tuple[float, ...]]
) -> None:
    print_table(
        f"Update cost, CPU us per labelled event (thread time), batch {args.batch}, "
        f"{args.rounds} interleaved rounds of {args.reps} batches; load average before / after "
        + " / ".join(" ".join(f"{x:.1f}" for x in load) for load in loads),
        list(COLUMNS.values()),
        [[r[key] for key in COLUMNS] for r in results],
    )


if __name__ == "__main__":
    main()
