"""DLRM forward latency: plain EmbeddingBag tables vs the low-rank correction, side by side.

Criteo-Kaggle reference DLRM (26 tables with the Kaggle row counts, D=16, bottom 13-512-256-64-16,
top 512-256-1). Every table has 5% of its rows active at rank 8 with random factors; all
variants share the same base tables. Variants:
  plain   the DLRM alone (in inference its base lookups are one serving-kernel call, as on a
          node; torch's EmbeddingBag ops are the training path);
  served  plain DLRM + ServingDelta built from the LiveEmbeddings' factors (the inference path:
          one call per rank into the serving kernel, whose bucketed cuckoo index finds the
          active rows, then each bag's sum of A rows @ B is added in place);
  live    every table wrapped in a LiveEmbedding module (the trainer's path, per-table ops).
Ids: 80% drawn from the active rows (the popular ones), 20% uniform. Inference mode, one thread
(an inference core). Time is the thread's CPU time (time.thread_time), which a busy shared
machine disturbs less than wall time. Goal: overhead <= 10% at batch 512. Also printed: the
ServingDelta's memory and the CPU time to build it (a node's trainer process builds one per
published version), and where the served overhead goes at batch 512: the plain model's
own parts (base lookups, MLPs) inside plain and served forwards, and the correction inside a
forward against the same correction repeated back to back on warm caches.

    python bench/forward_latency.py [--batches 128 512 2048] [--threads 1] [--rounds 15]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.workloads import criteo_workload, interleaved, median, print_table, write_json  # noqa: E402
from dlrm_core.batch import SparseBatch  # noqa: E402
from dlrm_core.live_embedding import (  # noqa: E402
    LiveEmbedding,
    LiveEmbeddingConfig,
    attach_live_embeddings,
)
from dlrm_core.model import DLRM, DLRMConfig  # noqa: E402
from dlrm_core.serving import ServingDelta  # noqa: E402


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512, 2048])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--active", type=float, default=0.05)
    parser.add_argument("--table-scale", type=float, default=1.0, help="shrink tables (tests)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    workload = criteo_workload(args.table_scale, args.active, gen)
    config, rows = workload.config, workload.rows
    plain, live_model, lives = build_models(config, workload.hot, args.rank, gen)
    active_total = sum(ids.numel() for ids in workload.hot)
    factors = {name: lv.factors() for name, lv in lives.items()}
    build_times = []
    for _ in range(5):  # a node builds one per published version: the median of a few
        build_start = time.thread_time()
        delta = ServingDelta.from_factors(1, config.feature_names, rows, factors)
        build_times.append(time.thread_time() - build_start)
    build_ms = median(build_times) * 1e3
    overhead = sum(lv.memory().overhead_bytes for lv in lives.values())
    base = sum(lv.memory().base_bytes for lv in lives.values())

    def batches_of(size: int) -> list[SparseBatch]:
        return workload.batches(8, size, gen, timed=False)

    results = [
        time_forwards(plain, live_model, delta, size, batches_of(size), args.rounds)
        for size in args.batches
    ]
    print_forwards(args, results)
    split_size = 512 if 512 in args.batches else args.batches[0]
    with torch.inference_mode():
        split = where_the_overhead_goes(plain, delta, batches_of(split_size), args.rounds)
    print_split(split, split_size, args.rounds)
    print(
        f"active rows {active_total:,}; trainer-side LiveEmbedding state "
        f"{overhead / 2**20:.1f} MiB = {100 * overhead / base:.2f}% of {base / 2**30:.2f} GiB of "
        f"tables; ServingDelta {delta.nbytes / 2**20:.1f} MiB, built in {build_ms:.0f} ms CPU "
        "(median of 5)"
    )
    payload = {
        "benchmark": "forward_latency",
        "args": vars(args),
        "active_rows": active_total,
        "overhead_bytes": overhead,
        "serving_delta_bytes": delta.nbytes,
        "serving_delta_build_ms": build_ms,
        "base_bytes": base,
        "results": results,
        "overhead_split": {"batch": split_size, **split},
    }
    write_json("forward_latency", payload)
    return payload


def build_models(
    config: DLRMConfig, hot: list[torch.Tensor], rank: int, gen: torch.Generator
) -> tuple[DLRM, DLRM, dict[str, LiveEmbedding]]:
    """The plain DLRM and a copy wrapped in LiveEmbeddings with random factors on each table's
    ``hot`` rows; returns both and the LiveEmbeddings."""
    plain = DLRM(config).eval()
    # a copy with the same weights that shares the base tables (deepcopy memo), then wrapped
    live_model = copy.deepcopy(plain, {id(t): t for t in plain.sparse_arch.tables})
    lives = attach_live_embeddings(
        live_model.sparse_arch, list(config.feature_names), LiveEmbeddingConfig(rank=rank)
    )
    for live, ids in zip(lives.values(), hot, strict=True):
        live.activate(ids, now=0.0, max_active=ids.numel())
        live.set_factors(torch.randn(ids.numel(), rank, generator=gen) * 0.01, live.B)
    return plain, live_model, lives


def time_forwards(
    plain: DLRM,
    live_model: DLRM,
    delta: ServingDelta,
    size: int,
    batches: list[SparseBatch],
    rounds: int,
) -> dict[str, object]:
    """CPU time per batch of the three variants on these batches, interleaved."""
    state = {"i": 0}

    def run(model: DLRM, served=None) -> None:
        model(batches[state["i"] % len(batches)], served)
        state["i"] += 1

    with torch.inference_mode():
        times = interleaved(
            {
                "plain": lambda: run(plain),
                "served": lambda: run(plain, delta),
                "live": lambda: run(live_model),
            },
            rounds=rounds,
            reps=max(2, 4096 // size),
        )
    row: dict[str, object] = {"batch": size}
    p = median(times["plain"])
    for name, ts in times.items():
        row[f"{name}_ms"] = median(ts) * 1e3
        row[f"{name}_ms_rounds"] = [t * 1e3 for t in ts]
        if name != "plain":
            row[f"{name}_overhead_pct"] = 100 * (median(ts) / p - 1)
    return row


def print_forwards(args: argparse.Namespace, results: list[dict]) -> None:
    print_table(
        f"DLRM forward, Criteo-Kaggle tables, {args.active:.0%} rows active, r={args.rank}, "
        f"{args.threads} thread(s); CPU ms per batch, median of {args.rounds} interleaved rounds",
        ["batch", "plain ms", "served ms", "served +%", "live ms", "live +%"],
        [
            [
                r["batch"],
                r["plain_ms"],
                r["served_ms"],
                r["served_overhead_pct"],
                r["live_ms"],
                r["live_overhead_pct"],
            ]
            for r in results
        ],
    )


def print_split(split: dict[str, float], size: int, rounds: int) -> None:
    print_table(
        f"Where the served overhead goes, batch {size}: CPU us per batch, median of "
        f"{rounds} rounds. 'in forward': inside whole forwards as the bench runs them; "
        "'back to back': the correction alone, repeated on one batch (warm caches)",
        ["part", "plain forward", "served forward"],
        [
            ["sparse lookups (base tables)", split["sparse_plain_us"], split["sparse_served_us"]],
            ["MLPs + interaction", split["mlp_plain_us"], split["mlp_served_us"]],
            ["correction in forward", "", split["correction_us"]],
            ["correction back to back", "", split["correction_hot_us"]],
        ],
    )


def where_the_overhead_goes(
    plain: DLRM, delta: ServingDelta, batches: list[SparseBatch], rounds: int
) -> dict[str, float]:
    """Thread CPU (us per batch) of the parts of DLRM.forward (base lookups, correction, MLPs),
    timed inside plain and served forwards that alternate round by round, and of the correction
    repeated back to back on one batch. Shows whether the correction slows the plain model's
    own parts (cache pollution) or costs more itself inside a forward than on warm caches."""
    clock = time.thread_time
    times: dict[str, list[float]] = {
        k: [] for k in ("sparse_plain", "mlp_plain", "sparse_served", "mlp_served", "correction")
    }
    times["correction_hot"] = []
    for _ in range(rounds):
        for variant in ("plain", "served"):
            sparse = mlp = correction = 0.0
            for b in batches:
                start = clock()
                pooled = plain.sparse_arch(b)
                looked_up = clock()
                if variant == "served":
                    delta.add_to_(pooled, b)
                corrected = clock()
                plain.logits(b, pooled)
                sparse += looked_up - start
                correction += corrected - looked_up
                mlp += clock() - corrected
            times[f"sparse_{variant}"].append(sparse / len(batches))
            times[f"mlp_{variant}"].append(mlp / len(batches))
            if variant == "served":
                times["correction"].append(correction / len(batches))
        start = clock()
        for _ in batches:
            delta.add_to_(pooled, batches[-1])
        times["correction_hot"].append((clock() - start) / len(batches))
    return {f"{k}_us": median(v) * 1e6 for k, v in times.items()}


if __name__ == "__main__":
    main()
