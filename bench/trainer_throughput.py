"""LoRA trainer throughput on one core, and rank adaptation time.

Part 1: the Criteo-Kaggle reference DLRM (26 tables with the Kaggle row counts, D=16, bottom
13-512-256-64-16, top 512-256-1), batch 512, torch.set_num_threads(1). Variants side by side:
  live_trainer  LiveTrainer.train_step: admit ids under a 2% budget per table, forward, BCE,
                backward into A and B only, row-wise Adagrad + Adam, make_room, rank adapt +
                prune every 50 steps, publish a factor version every 10 steps; one admission
                pass for all tables, and the tables of one rank run as one fused LiveGroup,
                all groups in three training kernel calls a step (live_group.py); on batches
                as serving leaves them, with the bottom MLP's output kept (ServedParts);
  live_trainer_recompute  the same trainer on the bare batches (bottom MLP recomputed);
  full_sgd      FullSparseTrainer.step: full sparse SGD of the same DLRM (every parameter; the
                embedding rows through the training kernel, one call per step);
  full_sgd_torch  the same before the kernel (torch.optim on EmbeddingBag's sparse gradients);
  model_floor   the least any embedding trainer must compute: forward of the DLRM and the
                backward down to the pooled embeddings (MLPs frozen), no optimizer at all;
  model_weight_grads  the same with the MLPs' weight gradients as well (what LiveTrainer skips
                by freezing the base model: input gradients only through the frozen layers).
Ids: 80% from a hot set (5% of each table), 20% uniform. Steady state: every wrapped table
starts with its budget full of hot rows, then warms up; so admissions come with LRU evictions.
Goals (issue 16): the live trainer >= 40,000 samples/s and <= 1.2x model_floor.

Part 2: RankController.adapt for 10^5 active rows (QR of B^T, eigh of the r x r Gram of A,
re-factor onto k directions), at D=16 and D=64. Goal: <= 50 ms.

Part 3: one rank group's correction per step, the torch ops LiveGroup used before
(EmbeddingBag, bmm, a hook's bmm, index_add_ into the pooled embeddings, index_put_, row-wise
Adagrad and Adam ops) against the training kernel's three calls (live_group.Correction).

    python bench/trainer_throughput.py [--batch 512] [--rounds 5] [--adapt-rows 100000]
        [--part adapt ...]  (only these parts: trainer, adapt, correction; default all)
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workloads import criteo_workload, interleaved, median, print_table, write_json  # noqa: E402
from dlrm_core.batch import SparseBatch  # noqa: E402
from dlrm_core.factor_optim import adam_, rowwise_adagrad_rows_  # noqa: E402
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig  # noqa: E402
from dlrm_core.live_group import Correction, LiveGroup  # noqa: E402
from dlrm_core.model import DLRM, DLRMConfig  # noqa: E402
from dlrm_core.rank import RankController  # noqa: E402
from dlrm_core.rank_policy import RankPolicy  # noqa: E402
from dlrm_core.trainer import (  # noqa: E402
    FullSparseTrainer,
    FullStepResult,
    FullTrainConfig,
    LiveTrainer,
    TrainerConfig,
)


class TorchOptimTrainer:
    """The reference column: FullSparseTrainer's step before its embedding rows went through the
    training kernel (EmbeddingBag's sparse gradients, torch.optim over every parameter)."""

    def __init__(self, model: DLRM, config: FullTrainConfig) -> None:
        self.model = model
        opt = torch.optim.SGD if config.optimizer == "sgd" else torch.optim.Adagrad
        self.dense_opt = opt(model.dense_parameters(), lr=config.lr_dense)
        self.sparse_opt = opt(model.embedding_parameters(), lr=config.lr_sparse)
        self.skipped = 0

    def step(self, batch: SparseBatch) -> FullStepResult:
        self.dense_opt.zero_grad(set_to_none=True)
        self.sparse_opt.zero_grad(set_to_none=True)
        loss = F.binary_cross_entropy_with_logits(self.model(batch), batch.labels)
        value = float(loss.detach())
        if math.isfinite(value):
            loss.backward()
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        values = [g.coalesce().values() if g.is_sparse else g for g in grads]
        if not math.isfinite(value) or not all(bool(torch.isfinite(v).all()) for v in values):
            self.skipped += 1
            return FullStepResult(value, True, {})
        touched = {}
        for name, param in zip(
            self.model.config.feature_names, self.model.embedding_parameters(), strict=True
        ):
            if param.grad is not None:
                grad = param.grad.coalesce()
                touched[name] = (grad.indices()[0].clone(), grad.values().norm(dim=1))
        self.dense_opt.step()
        self.sparse_opt.step()
        return FullStepResult(value, False, touched)


def throughput(args: argparse.Namespace) -> dict[str, object]:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    workload = criteo_workload(args.table_scale, 0.05, gen)
    config, rows, hot = workload.config, workload.rows, workload.hot
    batches = workload.batches(32, args.batch, gen)
    live = LiveTrainer(
        DLRM(config),
        TrainerConfig(live=LiveEmbeddingConfig(rank=4), budget_fraction=0.02, reuse=0),
    )
    full = FullSparseTrainer(DLRM(config))
    full_torch = TorchOptimTrainer(DLRM(config), FullTrainConfig())
    floor_model = DLRM(config).requires_grad_(False)
    # the MLPs of the reference shape, pooling from the floor's (frozen) tables: a fifth copy of
    # the 2 GB tables would not fit next to the other sessions on this machine
    grads_model = DLRM(DLRMConfig.criteo_reference([4] * len(rows)))
    grads_model.sparse_arch = floor_model.sparse_arch
    state = {"i": 0, "t": 0.0}

    def next_batch():
        state["i"] += 1
        return batches[state["i"] % len(batches)]

    def live_step(recompute: bool = False) -> None:
        state["t"] += 1.0
        batch = next_batch()
        live.train_step(batch if recompute else served[batch.request_ids[0].item()], state["t"])

    def floor_step(model: DLRM = floor_model) -> None:
        batch = next_batch()
        pooled = model.sparse_arch(batch).detach().requires_grad_(True)
        logits = model.over_arch(model.inter_arch(model.dense_arch(batch.dense), pooled))
        F.binary_cross_entropy_with_logits(logits, batch.labels).backward()
        model.zero_grad(set_to_none=True)

    # steady state: every wrapped table starts full (hot rows admitted up to its budget; twice,
    # so they pass the second-sighting gate)
    for name, ctl in live.controllers.items():
        for _ in range(2):
            ctl.admit(hot[config.feature_names.index(name)], now=0.0)
    # the batches as serving leaves them: with the bottom MLP's output kept (LiveTrainer.serve)
    served = {b.request_ids[0].item(): live.score_and_keep(b)[1] for b in batches}
    for _ in range(args.warmup):
        live_step()
    times = interleaved(
        {
            "live_trainer": live_step,
            "live_trainer_recompute": lambda: live_step(recompute=True),
            "full_sgd": lambda: full.step(next_batch()),
            "full_sgd_torch": lambda: full_torch.step(next_batch()),
            "model_floor": floor_step,
            "model_weight_grads": lambda: floor_step(grads_model),
        },
        rounds=args.rounds,
        reps=args.reps,
    )
    return report_throughput(args, times, live)


def report_throughput(
    args: argparse.Namespace, times: dict[str, list[float]], live: LiveTrainer
) -> dict[str, object]:
    """The trainers' step times (printed) and the live trainer's state."""
    results = {}
    for name, ts in times.items():
        results[name] = {
            "step_ms": median(ts) * 1e3,
            "samples_per_s": args.batch / median(ts),
            "step_ms_rounds": [t * 1e3 for t in ts],
        }
    mem = live.memory()
    overhead = sum(m.overhead_bytes for m in mem.values())
    base = sum(m.base_bytes for m in mem.values())
    print_table(
        f"Trainer, Criteo-Kaggle reference DLRM, batch {args.batch}, 1 thread; CPU time per "
        f"step, median of {args.rounds} interleaved rounds of {args.reps} steps",
        ["variant", "step ms", "samples/s"],
        [[n, r["step_ms"], r["samples_per_s"]] for n, r in results.items()],
    )
    floor = results["model_floor"]["step_ms"]
    for name in ("live_trainer", "live_trainer_recompute"):
        results[name]["x_model_floor"] = results[name]["step_ms"] / floor
        print(f"{name}: {results[name]['x_model_floor']:.2f}x model_floor (goal <= 1.2)")
    active = sum(lv.num_active for lv in live.lives.values())
    print(
        f"live trainer: {len(live.lives)} tables wrapped ({len(live.skipped_tables)} too small "
        f"for a 2% budget), {active:,} active rows, state {overhead / 2**20:.1f} MiB = "
        f"{100 * overhead / base:.2f}% of the wrapped tables, ranks {sorted(live.ranks().values())}"
        f", skipped batches {live.stats.skipped}"
    )
    return {
        "results": results,
        "active_rows": active,
        "overhead_bytes": overhead,
        "wrapped_base_bytes": base,
        "tables_wrapped": len(live.lives),
        "tables_skipped": live.skipped_tables,
    }


def adapt_time(args: argparse.Namespace) -> list[dict[str, object]]:
    out = []
    for dim, rank in ((16, 8), (64, 8), (64, 16)):
        gen = torch.Generator().manual_seed(1)
        live = LiveEmbedding(
            nn.EmbeddingBag(args.adapt_rows * 2, dim, mode="sum", sparse=True),
            LiveEmbeddingConfig(rank=rank),
        )
        live.activate(torch.arange(args.adapt_rows) * 2, now=0.0, max_active=args.adapt_rows)
        ctl = RankController(live, "t", RankPolicy(tau=0.9, r_max=rank), budget_bytes=10**12)
        # a decaying spectrum, so adapt lowers the rank (the costlier path: it re-factors)
        decay = 0.5 ** torch.arange(rank, dtype=torch.float32)
        a0 = torch.randn(args.adapt_rows, rank, generator=gen) * decay
        timings, ranks = [], []
        for _ in range(args.adapt_reps):
            live.set_factors(a0, torch.linalg.qr(torch.randn(dim, rank, generator=gen))[0].T)
            start = time.thread_time()
            ranks.append(ctl.adapt(now=1.0))
            timings.append(time.thread_time() - start)
        out.append(
            {
                "rows": args.adapt_rows,
                "dim": dim,
                "rank_from": rank,
                "rank_to": ranks[-1],
                "adapt_ms": median(timings) * 1e3,
                "adapt_ms_all": [t * 1e3 for t in timings],
            }
        )
    print_table(
        f"RankController.adapt, {args.adapt_rows:,} active rows, 1 thread; CPU ms, median of "
        f"{args.adapt_reps}",
        ["D", "rank from", "rank to", "adapt ms"],
        [[r["dim"], r["rank_from"], r["rank_to"], r["adapt_ms"]] for r in out],
    )
    return out


def group_ids(
    gen: torch.Generator, rows: int, n: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n ids, one per bag, 80% active, as a LiveGroup gets them: each id's position among the
    distinct keys (sorted), whether each key is active and the active keys' rows."""
    keys = torch.randint(0, 4 * rows, (n,), generator=gen).unique()
    index = torch.randint(0, keys.numel(), (n,), generator=gen)
    hit = torch.rand(keys.numel(), generator=gen) < 0.8
    pos = torch.randperm(rows, generator=gen)[: keys.numel()]
    return index, hit, pos


def correction_group(
    gen: torch.Generator, tables: int, rank: int, dim: int, rows: int
) -> tuple[list[LiveEmbedding], LiveGroup, list[RankController]]:
    """A rank group of ``tables`` tables over ``rows`` rows of random A, and their controllers."""
    lives = [
        LiveEmbedding(nn.EmbeddingBag(10, dim, mode="sum"), LiveEmbeddingConfig(rank=rank))
        for _ in range(tables)
    ]
    group = LiveGroup(lives, 0, 0, rows)
    group.a.copy_(torch.randn(rows, rank, generator=gen) * 0.01)
    controllers = [RankController(lv, "t", RankPolicy(r_max=dim), 10**12) for lv in lives]
    return lives, group, controllers


def correction_time(args: argparse.Namespace) -> dict[str, object]:
    """One rank group's correction per step (forward, backward, optimizer, gradient
    statistics): the torch ops LiveGroup used before against the training kernel."""
    gen = torch.Generator().manual_seed(2)
    tables, rank, dim, rows, batch = 9, 4, 16, 500_000, args.batch
    lives, group, controllers = correction_group(gen, tables, rank, dim, rows)
    accum = torch.zeros(rows)
    index, hit, pos = group_ids(gen, rows, tables * batch)
    offsets, bags = torch.arange(tables * batch), torch.arange(tables * batch)
    features, anchor = torch.arange(tables), torch.zeros(0, requires_grad=True)
    out_grad = torch.randn(batch, tables, dim, generator=gen) * 1e-3  # the pooled embeddings'

    def kernel_step() -> None:
        correction = Correction(
            [group], [0, pos.numel()], pos, hit, index, offsets, features, batch, tables
        )
        correction.add_to_(torch.zeros(batch, tables, dim), anchor).backward(out_grad)
        correction.step(accum, lives, controllers, 0.05, 1e-3)

    b_m, b_v = torch.zeros_like(group.b), torch.zeros_like(group.b)

    def torch_step() -> None:  # live_group.py before the kernel (462a29c)
        weights = hit.float().index_select(0, index)
        pooled_a = F.embedding_bag(
            pos.index_select(0, index), group.a, offsets, mode="sum", per_sample_weights=weights
        ).requires_grad_(True)
        b = group.b.detach().requires_grad_(True)
        delta = torch.bmm(pooled_a.view(tables, batch, -1), b)
        grams = []
        delta.register_hook(lambda g: grams.append(torch.bmm(g.transpose(1, 2), g)))
        pooled = torch.zeros(batch, tables, dim).index_add_(1, features, delta.transpose(0, 1))
        pooled.backward(out_grad)
        assert pooled_a.grad is not None and b.grad is not None
        ok = torch.isfinite(pooled_a.grad).all() & torch.isfinite(b.grad).all()
        with torch.no_grad():
            per_value = pooled_a.grad.index_select(0, bags) * weights.unsqueeze(1)
            a_grad = torch.zeros(pos.numel(), rank).index_put_((index,), per_value, True)
            rowwise_adagrad_rows_(group.a, accum, pos, a_grad, 0.05)
            steps = torch.tensor([float(i + 1) for i in range(tables)]).view(-1, 1, 1)
            adam_(group.b, b.grad, b_m, b_v, steps, 1e-3)
        for controller, gram in zip(controllers, grams[0], strict=True):
            controller.observe_gram(gram)
        bool(ok)

    times = interleaved(
        {"torch_ops": torch_step, "training_kernel": kernel_step},
        rounds=args.rounds,
        reps=args.reps,
    )
    out = {name: median(ts) * 1e3 for name, ts in times.items()}
    print_table(
        f"One rank group's correction per step ({tables} tables, rank {rank}, D {dim}, batch "
        f"{batch}, {rows:,} active rows): forward, backward, optimizer, gradient statistics; "
        f"CPU ms, median of {args.rounds} interleaved rounds",
        ["variant", "ms"],
        [[n, ms] for n, ms in out.items()],
    )
    return {"step_ms": out, "speedup": out["torch_ops"] / out["training_kernel"]}


PARTS: dict[str, tuple[str, Callable[[argparse.Namespace], object]]] = {
    "trainer": ("trainer", throughput),
    "adapt": ("rank_adapt", adapt_time),
    "correction": ("correction", correction_time),
}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=60)
    parser.add_argument("--adapt-rows", type=int, default=100_000)
    parser.add_argument("--adapt-reps", type=int, default=11)
    parser.add_argument("--table-scale", type=float, default=1.0, help="shrink tables (tests)")
    parser.add_argument(
        "--part", action="append", choices=sorted(PARTS), help="run only this part (repeatable)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    payload: dict[str, object] = {"benchmark": "trainer_throughput", "args": vars(args)}
    for part in args.part or PARTS:
        key, run = PARTS[part]
        payload[key] = run(args)
    write_json("trainer_throughput", payload)
    return payload


if __name__ == "__main__":
    main()
