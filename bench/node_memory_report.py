"""bench/node_memory.py's tables, and the node's memory at several budgets (--compare-budgets):
does what the OS measures grow with the account, byte for byte?

At one budget "account / measured" is dominated by the trainer's fixed runtime (~180 MiB,
measured, so the same in both columns); the proportional part is where an account can be wrong.
Nodes at different budgets hold different numbers of rows, so a least-squares line through the
(accounted, measured) proportional bytes of each run separates what grows with the account (the
slope: 1.0 if every accounted byte is a byte the OS holds and nothing unaccounted grows with the
rows) from what does not (the intercept: a working set beside the rows, at any budget).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from bench.workloads import print_table

MIB = 2**20
PAGE = 4096
ROLLUP_COLUMNS = ("Pss", "Rss", "Private_Dirty", "Shared", "Pss_Anon", "Pss_File", "Pss_Shmem")


def fit_line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line y = intercept + slope * x through
    ``points`` (at least two distinct x)."""
    n = len(points)
    mean_x = sum(x for x, _ in points) / n
    mean_y = sum(y for _, y in points) / n
    sxx = sum((x - mean_x) ** 2 for x, _ in points)
    if n < 2 or sxx == 0:
        raise ValueError("a line needs at least two points with different x")
    slope = sum((x - mean_x) * (y - mean_y) for x, y in points) / sxx
    return slope, mean_y - slope * mean_x


def budget_fit(budgets: Sequence[float], results: Sequence[dict]) -> dict[str, object]:
    """The runs' proportional bytes side by side (node_memory.summary of each) and the line
    measured = intercept + slope * accounted through them."""
    rows = [
        {
            "budget_pct": budget,
            "accounted_bytes": r["proportional_accounted_bytes"],
            "measured_bytes": r["proportional_measured_bytes"],
            "accounted_pct_of_tables": r["proportional_accounted_pct_of_tables"],
            "measured_pct_of_tables": r["proportional_measured_pct_of_tables"],
        }
        for budget, r in zip(budgets, results, strict=True)
    ]
    slope, intercept = fit_line([(r["accounted_bytes"], r["measured_bytes"]) for r in rows])
    return {"runs": rows, "slope": round(slope, 3), "intercept_bytes": round(intercept)}


def print_fit(fit: dict, table_bytes: int) -> None:
    runs = fit["runs"]
    print_table(
        "Proportional memory by budget (MiB; % of the tables)",
        ["budget %", "accounted", "measured", "accounted %", "measured %"],
        [
            [
                r["budget_pct"],
                r["accounted_bytes"] / MIB,
                r["measured_bytes"] / MIB,
                r["accounted_pct_of_tables"],
                r["measured_pct_of_tables"],
            ]
            for r in runs
        ],
    )
    intercept = fit["intercept_bytes"]
    print(
        f"\nmeasured = {intercept / MIB:.2f} MiB ({100 * intercept / table_bytes:.2f}% of the "
        f"tables) + {fit['slope']} x accounted, over {len(runs)} budgets"
    )


def print_verdict(args: argparse.Namespace, result: dict, without: dict, with_: dict) -> None:
    print(
        f"\nproportional measured: {result['proportional_measured_pct_of_tables']}%"
        f" of the tables (account: {result['proportional_accounted_pct_of_tables']}%), budget "
        f"{args.budget_pct}%; telemetry (measured proportional) "
        f"{result['telemetry_memory_pct_of_tables']}%; account / measured "
        f"{result['accounted_over_measured']}; "
        f"{with_['folded_rows']:,} rows folded on {with_['folded_pages']:,} pages "
        f"({with_['folded_pages'] * PAGE / MIB:.1f} MiB if kept private), private now "
        f"{with_['after']['trainer_cow_private'] / MIB:.2f} MiB; trained "
        f"{with_['trained_samples']:,} samples; load {with_['load_avg_1m']}; requests left "
        f"unserved by the replay (dropped before measuring): {without['unserved_requests']:,} "
        f"without trainer, {with_['unserved_requests']:,} with"
    )


def print_run(args: argparse.Namespace, result: dict, without: dict, with_: dict) -> None:
    print_table(
        f"Node memory, two {args.rows_per_table:,}-row tables ({result['table_bytes'] / MIB:.0f} "
        f"MiB of tables), {args.duration:.0f} s at {args.qps:.0f} req/s x {args.rows} rows, "
        f"budget {args.budget_pct}%; MiB",
        ["component", "measured", "account"],
        [["fixed: trainer runtime, code pages"] + [result["fixed_bytes"] / MIB] * 2]
        + [[k, v["measured"] / MIB, v["account"] / MIB] for k, v in result["components"].items()]
        + [
            [
                "proportional",
                result["proportional_measured_bytes"] / MIB,
                result["proportional_accounted_bytes"] / MIB,
            ],
            [
                "LoRA-attributable (node with - without; account: + fixed)",
                result["lora_measured_bytes"] / MIB,
                result["lora_accounted_bytes"] / MIB,
            ],
        ],
    )
    procs = [("inference, no trainer", without["after"]["inference"])]
    procs += [("inference", with_["after"]["inference"]), ("trainer", with_["after"]["trainer"])]
    print_table(
        "smaps_rollup after the replay; MiB",
        ["process", *ROLLUP_COLUMNS],
        [[n, *(r[k] / MIB for k in ROLLUP_COLUMNS)] for n, r in procs],
    )
    print_verdict(args, result, without, with_)
