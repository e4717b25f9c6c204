"""A node's LoRA memory as the OS measures it, against its memory account (issue 14, item 1).

The same node (two 10^6-row tables of D=16 on the synthetic stream: 128 MB of tables) runs twice,
each in a fresh process: with its trainer and with --no-trainer. Each replays --qps requests of
--rows rows per second for --duration s, labels arriving --label-delay s after serving. Before and
after the replay it reads, from /proc:
  - /proc/<pid>/smaps_rollup of the inference process (this one) and of the trainer: Pss, Rss,
    Private_Dirty, Shared (clean + dirty), Pss_Shmem;
  - /proc/<trainer>/smaps: the anonymous pages inside its copy-on-write mappings of the base
    tables, i.e. the base pages its folds made private;
  - the node's /dev/shm files, by allocated blocks (they are sparse): base tables, factor slots
    (factors-*.bin: two versions' serving layouts, which inference serves in place), the rest
    (the feed rings).
A node's total counts every shared-memory page once: the sum over its processes of
Pss - Pss_Shmem, plus the allocated bytes of its /dev/shm files.
LoRA-attributable (measured) = total with trainer - total without, after the replay.

The account beside it: the trainer's memory_account (per table, incl. its fold record, the base
pages its folds hold private and the node's copies outside it: the factor slots' allocated
blocks, nodeworker/shared_memory.py held_bytes), as the
trainer's stats report it. Also shown: the rows folded since the checkpoint (a snapshot's fold
patch) and the 4 KiB pages holding them, which the trainer would hold private if it never gave
them back (nodeworker/base_pages.py), beside the private base pages measured.
Fixed (measured, reported beside the account) = code and runtime: the trainer's file-backed
pages after the replay, its anonymous pages when ready less its own state's account then
(interpreter, torch, the model's MLPs), and the file pages inference maps only with a trainer.
Proportional (measured) = the trainer's own account when ready plus the growth of its anonymous
pages since (Pss_Anon, which holds the private base pages too), the factor slots (/dev/shm,
with - without) and inference's anonymous memory with a trainer less without.
Prints a table and writes bench/out/node_memory.json. With --compare-budgets, the trainer's node
also runs at those budgets, and a line through the runs' (accounted, measured) proportional bytes
says how much of what the OS measures grows with the account (bench/node_memory_report.py).

    python bench/node_memory.py [--duration 60] [--qps 200] [--rows 8] [--rows-per-table 1000000]
        [--budget-pct 2] [--compare-budgets 1 4]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.node_memory_report import PAGE, budget_fit, print_fit, print_run  # noqa: E402
from bench.workloads import write_json  # noqa: E402
from nodeworker.protocol import POLICY_BOUNDS  # noqa: E402
from nodeworker.runtime_metrics import smaps_rollup  # noqa: E402


def private_by_mapping(pid: int) -> dict[str, int]:
    """Private bytes (Private_Clean + Private_Dirty) of a process by kind of mapping, from
    /proc/<pid>/smaps: "base cow" (the anonymous pages in its copy-on-write mappings of the base
    tables: the pages its folds made private), "heap" (malloc's brk heap), "anon" (anonymous
    mmaps: malloc arenas, torch's large tensors), "shm" (other /dev/shm files), "files"
    (libraries and the rest)."""
    out = {"base cow": 0, "heap": 0, "anon": 0, "shm": 0, "files": 0}
    kind = "files"
    header = re.compile(r"^[0-9a-f]+-[0-9a-f]+ \S+ \S+ \S+ \S+\s*(.*)$")
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            match = header.match(line)
            if match:
                path = match.group(1).strip()
                if re.search(r"/base-[^/]*\.f32", path):
                    kind = "base cow"
                elif path == "[heap]":
                    kind = "heap"
                elif not path or path.startswith("[anon"):
                    kind = "anon"
                else:
                    kind = "shm" if path.startswith("/dev/shm") else "files"
            elif kind == "base cow":  # its pages of the shared file are mapped, not its own
                if line.startswith("Anonymous:"):
                    out[kind] += int(line.split()[1]) * 1024
            elif line.startswith(("Private_Clean:", "Private_Dirty:")):
                out[kind] += int(line.split()[1]) * 1024
    return out


def shm_bytes(directory: Path) -> dict[str, int]:
    """Allocated bytes of a node's shared-memory files: base tables, factor slots, the rest."""
    out = {"base": 0, "factors": 0, "other": 0}
    for path in directory.iterdir():
        used = path.stat().st_blocks * 512
        kind = "base" if path.name.startswith("base-") else "other"
        out["factors" if path.name.startswith("factors-") else kind] += used
    return out


def rollup(pid: int) -> dict[str, int]:
    """smaps_rollup, and the resident file pages (RssFile, /proc/<pid>/status): Pss_File splits
    a shared library's pages among every process mapping it (the twin node of a side-by-side
    run, any other torch process on the machine), so it moves when they start or exit; RssFile
    moves only when the process itself touches or drops code pages."""
    found = smaps_rollup(pid)
    if found is None:
        raise RuntimeError(f"/proc/{pid}/smaps_rollup is unreadable")
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    found["RssFile"] = int(status["RssFile"].split()[0]) * 1024
    return found


def measure(runtime) -> dict[str, object]:
    """What the OS says about the node now, and what its account says."""
    inference = rollup(os.getpid())
    out: dict[str, object] = {"inference": inference, "shm": shm_bytes(runtime.shm_dir)}
    nonshm = inference["Pss"] - inference["Pss_Shmem"]
    pid = runtime.trainer.pid if runtime.trainer.running else None
    if pid:
        trainer = rollup(pid)
        out["trainer"] = trainer
        out["trainer_private"] = private = private_by_mapping(pid)
        out["trainer_cow_private"] = private["base cow"]
        nonshm += trainer["Pss"] - trainer["Pss_Shmem"]
        stats = runtime.trainer.last_stats
        out["account_trainer"] = (
            sum(t for t, _ in stats.memory.values()) + stats.feed.join_bytes if stats else 0
        )
    out["node_total"] = nonshm + sum(out["shm"].values())  # type: ignore[union-attr]
    out["telemetry_memory_bytes"] = runtime.telemetry_snapshot().memory_overhead_bytes
    return out


def folded_pages(runtime, dim: int) -> tuple[int, int]:
    """(rows folded since the checkpoint, 4 KiB pages holding them) from a snapshot's patches."""
    import torch

    from nodeworker.snapshots import read_patch

    taken = runtime.operations.snapshot()
    directory = runtime.snapshots.root / taken["snapshot"]
    rows = pages = 0
    for path in directory.glob("*.patch"):
        ids = read_patch(path)[0]
        first = ids * (4 * dim) // PAGE
        last = (ids * (4 * dim) + 4 * dim - 1) // PAGE
        rows += int(ids.numel())
        pages += int(torch.unique(torch.cat([first, last])).numel())
    return rows, pages


def synthetic_stream(  # type: ignore[no-untyped-def]
    args: argparse.Namespace, num_events: int = 10**8, per_second: float = 100.0
):
    """The bench's drifting stream: ``num_events`` sets how fast ids are born (a share of each
    id space over that many events), ``per_second`` the events' clock (the tastes' drift)."""
    from dlrm_core.synthetic import SyntheticConfig, SyntheticStream

    return SyntheticStream(
        SyntheticConfig(
            seed=args.seed,
            num_events=num_events,
            events_per_second=per_second,
            user_rows=args.rows_per_table,
            item_rows=args.rows_per_table,
            context_rows=(1000, 50),
            n_dense=4,
        )
    )


@contextlib.contextmanager
def started_node(args: argparse.Namespace, stream) -> Iterator:  # type: ignore[no-untyped-def]
    """A real node on ``stream``'s schema (its checkpoint built once in --workdir), with its
    trainer when --variant is "with", at --budget-pct, ready and 2 s after (the trainer's first
    stats: its account when ready); stopped on leaving."""
    from nodeworker import protocol
    from nodeworker.runtime import NodeRuntime, RuntimeConfig, build_fresh_checkpoint

    work = Path(args.workdir)
    checkpoint = work / "base.ckpt"
    if not checkpoint.exists():
        build_fresh_checkpoint(stream.schema, checkpoint, args.seed)
    policy, errors = protocol.validate_policy({"memory_budget_pct": args.budget_pct})
    assert not errors, errors
    runtime = NodeRuntime(
        RuntimeConfig(
            name=f"mem-{args.variant}",
            data_dir=work / f"node-{args.variant}-{args.budget_pct}",  # a fresh node per budget
            checkpoint=str(checkpoint),
            policy=policy,
            trainer=args.variant == "with",
            qos=False,  # the trainer learns at full duty: the most folds a replay can make
            snapshot_interval_s=3600,
        )
    ).start()
    try:
        runtime.wait_ready()
        time.sleep(2.0)
        yield runtime
    finally:
        runtime.stop()


def trainer_extras(runtime) -> dict[str, object]:  # type: ignore[no-untyped-def]
    """What a node with a trainer adds to a measurement (but the rows folded, which take a
    snapshot): the account's copies, samples trained, versions published, ranks, the feed's
    sizes and counts (rows the join and the trainer's backlog dropped: never trained on)."""
    out: dict[str, object] = {}
    # the node's copies outside its trainer as its account counts them (held_bytes): the factor
    # files' allocated blocks (both versions' serving layouts; given back past what one uses)
    out["account_slots"] = shm_bytes(runtime.shm_dir)["factors"]
    out["trained_samples"] = runtime.metrics.trained_samples
    stats = runtime.trainer.last_stats
    out["versions"] = stats.version if stats else 0
    out["ranks"] = stats.ranks if stats else {}
    out["feed_sizes"] = stats.feed.sizes if stats and stats.feed else {}
    out["feed_counts"] = stats.feed.counts if stats and stats.feed else {}
    out["dropped_backlog"] = stats.feed.dropped_backlog if stats and stats.feed else 0
    return out


def run_variant(args: argparse.Namespace) -> dict[str, object]:
    from nodeworker.replayer import ReplayConfig, Replayer

    stream = synthetic_stream(args)
    with started_node(args, stream) as runtime:
        model_config = runtime.inference.model.config
        dim = model_config.embedding_dim
        ready = measure(runtime)
        config = ReplayConfig(
            qps=args.qps, label_delay_s=args.label_delay, rows_per_request=args.rows, seed=args.seed
        )
        replayer = Replayer(runtime.predict, runtime.feedback, stream, config).start()
        time.sleep(args.duration)
        replayer.stop()
        time.sleep(2.0)  # the last version published gets installed, the stats arrive
        out: dict[str, object] = {"variant": args.variant, "ready": ready}
        if args.variant == "with":
            out["folded_rows"], out["folded_pages"] = folded_pages(runtime, dim)
            out |= trainer_extras(runtime)
        out["after"] = measure(runtime)
        out["served_requests"] = replayer.stats.served
        out["unserved_requests"] = replayer.stats.unserved  # dropped at stop, not measured
        out["table_bytes"] = 4 * dim * sum(model_config.table_sizes)
        out["load_avg_1m"] = round(os.getloadavg()[0], 2)
        return out


def spawn(args: argparse.Namespace, variant: str, budget_pct: float) -> dict[str, object]:
    command = [sys.executable, __file__, "--variant", variant, "--workdir", args.workdir]
    command += ["--budget-pct", str(budget_pct)]
    for key in ("duration", "qps", "rows", "label_delay", "seed", "rows_per_table"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        tail = "\n".join(done.stderr.strip().splitlines()[-20:])
        raise SystemExit(f"the {variant} node at {budget_pct}% failed ({done.returncode}):\n{tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _nonshm(rollup: dict[str, int]) -> int:
    return rollup["Pss"] - rollup["Pss_Shmem"]


def summary(without: dict, with_: dict) -> dict[str, object]:
    """The with-minus-without measurements, split into fixed and proportional, beside the
    account (bytes). Fixed: code and runtime, i.e. the trainer's file-backed pages and its
    anonymous pages when ready less its own state then, and the file pages inference maps only
    with a trainer. Proportional: the trainer's state (its own account when ready plus the
    growth of its anonymous pages since), the factor slots (/dev/shm) and inference's anonymous
    memory with a trainer less without. Its account is the trainer's (which holds the node's
    copies: the slots, nodeworker/shared_memory.py; inference serves from them in place)."""
    before, after, base = with_["ready"], with_["after"], without["after"]
    trainer0, trainer1 = before["trainer"], after["trainer"]
    # the node's copies at ready (in the trainer's account then): the slots
    copies0 = before["shm"]["factors"] - without["ready"]["shm"]["factors"]
    own0 = max(0, before["account_trainer"] - copies0)
    inference_file = after["inference"]["Pss_File"] - base["inference"]["Pss_File"]
    fixed = _nonshm(trainer1) - trainer1["Pss_Anon"] + trainer0["Pss_Anon"] - own0 + inference_file
    components = {
        # name: (measured, accounted)
        "trainer: state (anon growth + own account when ready)": (
            trainer1["Pss_Anon"] - trainer0["Pss_Anon"] + own0,
            after["account_trainer"] - with_["account_slots"],
        ),
        "shm factor slots (with - without)": (
            after["shm"]["factors"] - base["shm"]["factors"],
            with_["account_slots"],
        ),
        "inference: anon (with - without; no copy of a version)": (
            after["inference"]["Pss_Anon"] - base["inference"]["Pss_Anon"],
            0,
        ),
    }
    measured_total = after["node_total"] - base["node_total"]
    proportional = sum(m for m, _ in components.values())
    accounted = after["account_trainer"]
    table = with_["table_bytes"]
    return {
        "fixed_bytes": fixed,
        "components": {k: {"measured": m, "account": a} for k, (m, a) in components.items()},
        "lora_measured_bytes": measured_total,
        "lora_accounted_bytes": accounted + fixed,
        "accounted_over_measured": round((accounted + fixed) / measured_total, 4),
        "proportional_measured_bytes": proportional,
        "proportional_accounted_bytes": accounted,
        "proportional_measured_pct_of_tables": round(100 * proportional / table, 3),
        "proportional_accounted_pct_of_tables": round(100 * accounted / table, 3),
        "telemetry_memory_bytes": after["telemetry_memory_bytes"],
        "telemetry_memory_pct_of_tables": round(100 * after["telemetry_memory_bytes"] / table, 3),
        "table_bytes": table,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--qps", type=float, default=200.0)
    parser.add_argument("--rows", type=int, default=8, help="candidates per request")
    parser.add_argument("--label-delay", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-table", type=int, default=1_000_000)
    parser.add_argument("--budget-pct", type=float, default=2.0)
    parser.add_argument(
        "--compare-budgets",
        type=float,
        nargs="*",
        default=[],
        metavar="PCT",
        help="also run the node with its trainer at these budgets and fit measured against "
        "accounted proportional bytes (bench/node_memory_report.py)",
    )
    parser.add_argument("--variant", choices=("with", "without"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    budgets = [args.budget_pct, *args.compare_budgets]
    bound = POLICY_BOUNDS["memory_budget_pct"]  # what a node's policy accepts
    assert bound.low is not None and bound.high is not None
    for pct in budgets:
        if not bound.low < pct <= bound.high:
            parser.error(f"a budget must be in ({bound.low:g}, {bound.high:g}] %, got {pct}")
    if len(set(budgets)) != len(budgets):
        parser.error(f"the budgets must differ, got {budgets}")
    if args.variant:  # a child: one node, JSON on the last line
        print(json.dumps(run_variant(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="node-memory-") as tmp:
        args.workdir = tmp
        without = spawn(args, "without", args.budget_pct)
        withs = [spawn(args, "with", pct) for pct in budgets]
    results = [summary(without, with_) for with_ in withs]
    result, with_ = results[0], withs[0]
    print_run(args, result, without, with_)
    payload: dict[str, object] = {"args": vars(args), "without": without, "with": with_, **result}
    if args.compare_budgets:
        fit = budget_fit(budgets, results)
        print_fit(fit, result["table_bytes"])
        by_budget = dict(zip(map(str, budgets), withs, strict=True))
        payload |= {"budget_fit": fit, "with_by_budget": by_budget}
    write_json("node_memory", payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
