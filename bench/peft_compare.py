"""LiveEmbedding vs the peft package's LoRA Embedding, same rank, one 10^6 x 64 table.

5% of the rows are active (trained on); every batch draws its ids from them. Variants:
  live        LiveEmbedding: A only for the active rows (sorted-id slot map), row-wise Adagrad
              on A's rows in the batch, Adam on B;
  peft_adam   peft.get_peft_model(LoraConfig(r, target_modules=["emb"])) on an nn.Embedding,
              trained with torch.optim.Adam (the usual PEFT setup);
  peft_sgd    the same PEFT layer with plain SGD (the cheapest optimizer it can use).
PEFT's LoRA Embedding needs dense gradients: with a sparse=True base its backward fails (the
error is recorded below). A train step = forward of one batch, MSE loss, backward, optimizer
step. Adapter bytes: parameters (+ slot map) and, separately, optimizer state.
Goals: LiveEmbedding adapter bytes <= 1/10 of PEFT's; train step no slower than PEFT.

    python bench/peft_compare.py [--rows 1000000] [--dim 64] [--rank 8] [--batch 512]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import peft
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workloads import active_rows, interleaved, median, print_table, write_json  # noqa: E402
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig  # noqa: E402


class OneTable(nn.Module):
    def __init__(self, rows: int, dim: int, sparse: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(rows, dim, sparse=sparse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.emb(ids)


def peft_model(rows: int, dim: int, rank: int, sparse: bool = False) -> nn.Module:
    config = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=["emb"], lora_dropout=0.0)
    return peft.get_peft_model(OneTable(rows, dim, sparse), config)


def nbytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--active", type=float, default=0.05)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    hot = active_rows(args.rows, args.active, gen)
    times, sizes = time_steps(args, hot, gen)
    sparse_error = sparse_base_error(args.dim, args.rank)
    results = {
        name: {
            "step_ms": median(ts) * 1e3,
            "step_ms_rounds": [t * 1e3 for t in ts],
            "adapter_bytes": sizes[name][0],
            "optimizer_bytes": sizes[name][1],
        }
        for name, ts in times.items()
    }
    print_table(
        f"{args.rows:,} x {args.dim} table, r={args.rank}, {hot.numel():,} active rows "
        f"({args.active:.0%}), batch {args.batch}, {args.threads} thread(s); CPU ms per train "
        f"step, median of {args.rounds} interleaved rounds; peft {peft.__version__}",
        ["variant", "step ms", "adapter MiB", "optimizer MiB", "total MiB"],
        [
            [name, r["step_ms"], r["adapter_bytes"] / 2**20, r["optimizer_bytes"] / 2**20,
             (r["adapter_bytes"] + r["optimizer_bytes"]) / 2**20]
            for name, r in results.items()
        ],
    )  # fmt: skip
    ratios = {
        "adapter_bytes_live_over_peft": sizes["live"][0] / sizes["peft_adam"][0],
        "total_bytes_live_over_peft_adam": sum(sizes["live"]) / sum(sizes["peft_adam"]),
        "step_time_live_over_peft_adam": results["live"]["step_ms"]
        / results["peft_adam"]["step_ms"],
        "step_time_live_over_peft_sgd": results["live"]["step_ms"] / results["peft_sgd"]["step_ms"],
    }
    for key, value in ratios.items():
        print(f"{key}: {value:.4f}")
    print(f"peft with a sparse=True base: {sparse_error or 'works'}")
    payload = {
        "benchmark": "peft_compare",
        "args": vars(args),
        "peft_version": peft.__version__,
        "active_rows": int(hot.numel()),
        "results": results,
        "ratios": ratios,
        "peft_sparse_base_error": sparse_error,
    }
    write_json("peft_compare", payload)
    return payload


def time_steps(
    args: argparse.Namespace, hot: torch.Tensor, gen: torch.Generator
) -> tuple[dict[str, list[float]], dict[str, tuple[int, int]]]:
    """Train-step CPU times of the three variants, interleaved, and each one's (adapter bytes,
    optimizer bytes)."""
    batches = [
        (hot[torch.randint(0, hot.numel(), (args.batch,), generator=gen)],
         torch.randn(args.batch, args.dim, generator=gen))
        for _ in range(16)
    ]  # fmt: skip
    offsets = torch.arange(args.batch)

    live = LiveEmbedding(
        nn.EmbeddingBag(args.rows, args.dim, mode="sum", sparse=True),
        LiveEmbeddingConfig(rank=args.rank),
    )
    live.activate(hot, now=0.0, max_active=hot.numel())
    peft_adam = peft_model(args.rows, args.dim, args.rank)
    peft_sgd = peft_model(args.rows, args.dim, args.rank)
    adam = torch.optim.Adam([p for p in peft_adam.parameters() if p.requires_grad], lr=1e-3)
    sgd = torch.optim.SGD([p for p in peft_sgd.parameters() if p.requires_grad], lr=1e-2)
    state = {"i": 0}

    def next_batch() -> tuple[torch.Tensor, torch.Tensor]:
        state["i"] += 1
        return batches[state["i"] % len(batches)]

    def live_step() -> None:
        ids, target = next_batch()
        F.mse_loss(live(ids, offsets), target).backward()
        live.step(lr_a=0.05, lr_b=1e-3)

    def peft_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        ids, target = next_batch()
        opt.zero_grad(set_to_none=True)
        F.mse_loss(model(ids), target).backward()
        opt.step()

    times = interleaved(
        {
            "live": live_step,
            "peft_adam": lambda: peft_step(peft_adam, adam),
            "peft_sgd": lambda: peft_step(peft_sgd, sgd),
        },
        rounds=args.rounds,
        reps=10,
    )
    report = live.memory()
    peft_params = [p for p in peft_adam.parameters() if p.requires_grad]
    adam_state = [t for s in adam.state.values() for t in s.values() if torch.is_tensor(t)]
    sizes = {
        "live": (report.a_bytes + report.b_bytes + report.slot_map_bytes, report.optimizer_bytes),
        "peft_adam": (nbytes(peft_params), nbytes(adam_state)),
        "peft_sgd": (nbytes(peft_params), 0),
    }
    return times, sizes


def sparse_base_error(dim: int, rank: int) -> str | None:
    """PEFT's LoRA Embedding on a sparse=True base: the first line of its backward's error."""
    try:
        sparse = peft_model(1000, dim, rank, sparse=True)
        sparse(torch.arange(8)).sum().backward()
    except RuntimeError as exc:
        return str(exc).splitlines()[0]
    return None


if __name__ == "__main__":
    main()
