"""A day of a node's traffic replayed through a real node, its memory sampled every replayed hour
(issue 14: "the memory of a node after 24 h of replay equals its memory after 1 h", and the
proportional account <= 2% of the tables at every sample of a 24-hour node replay).

What "24 hours" means here. The node's clock is the wall clock (label windows, publishing every
~0.2 s, snapshots), and faking it would change production code. So the replay carries the EVENTS
of --hours hours of a node serving --qps requests/s (Q) of --rows rows: that many requests, the
synthetic stream's ids born over exactly those events (a fifth of each id space) and its tastes
drifting on the clock of Q, sent at --rate requests/s (R, what the node keeps up with). The
label delay is --label-delay s at Q, scaled to delay x Q / R at R, so the label join holds as
many rows as it would at Q. Events, distinct ids, admissions, folds and evictions are those of
the day; what runs on wall time is not: the node publishes ~5 versions a second of wall time,
so a replay of W s publishes ~5W versions, not the day's 432,000.

With minus without. The same replay runs through a node with its trainer and one without
(--no-trainer: it joins in a thread), side by side by default (--sequential: one after the
other), each in a process of its own; each samples itself from /proc (bench/node_memory.py's
measure: smaps_rollup, the trainer's private base pages, the node's /dev/shm) when it has
handled each hour's requests. Hour h's proportional measured / account / fixed parts are
bench/node_memory.py's summary of the two nodes' samples of hour h.

The trainer must keep up for the replay to carry a day of training: the "to trainer" column
(rows it took, beside the events served) says whether it did.

Verdict: the node's total (with its trainer) at the last hour against hour 1, within +5%
(TOLERANCE, fixed before the first run), and the proportional part (measured and account) <=
the budget at every hourly sample. Prints a table, writes bench/out/node_replay.json and a
plot, bench/out/node_replay.html (plotly; no matplotlib in the stack).

    nice -n 19 python bench/node_replay.py --hours 24 --qps 8 --rate 400   # ~30 min
    python bench/node_replay.py --report bench/out/node_replay.json        # its tables again
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import node_memory  # noqa: E402
from bench.workloads import OUT_DIR, print_table, write_json  # noqa: E402

TOLERANCE = 0.05  # the node's total at the last hour may exceed hour 1's by this share
MIB = 2**20


def requests_per_hour(args: argparse.Namespace) -> int:
    return round(args.qps * 3600)


def day_stream(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The replay's stream: exactly the replayed hours' events, on the clock of Q."""
    events = requests_per_hour(args) * args.hours * args.rows
    return node_memory.synthetic_stream(args, num_events=events, per_second=args.qps * args.rows)


def id_drift(args: argparse.Namespace) -> list[dict[str, int]]:
    """Per replayed hour and id table (user, item): the distinct ids the stream drew, and those
    it had not drawn in any earlier hour (ids born during the day included)."""
    import numpy as np

    stream, per_hour = day_stream(args), requests_per_hour(args) * args.rows
    seen = [np.zeros(args.rows_per_table, dtype=bool) for _ in range(2)]
    hours: list[dict[str, int]] = []
    hour_ids: list[list] = [[], []]
    for k in range(len(stream)):
        batch = stream.batch(k)
        for table in range(2):
            hour_ids[table].append(batch.values[table].numpy())
        last = k + 1 == len(stream)
        if (k + 1) * stream.config.batch_size >= (len(hours) + 1) * per_hour or last:
            row: dict[str, int] = {"hour": len(hours) + 1}
            for table, name in enumerate(("user", "item")):
                ids = np.unique(np.concatenate(hour_ids[table]))
                row[f"{name}_distinct"] = int(ids.size)
                row[f"{name}_new"] = int((~seen[table][ids]).sum())
                seen[table][ids] = True
            hours.append(row)
            hour_ids = [[], []]
    return hours


def active_rows(runtime) -> int:  # type: ignore[no-untyped-def]
    """Rows with a correction in the version inference serves (all tables)."""
    delta, _ = runtime.inference.served()
    return sum(g.a.shape[0] - 1 for g in delta.groups) if delta is not None else 0


def sample(runtime, replayer, dim: int, started: float) -> dict[str, object]:  # type: ignore[no-untyped-def]
    stats = replayer.stats
    out: dict[str, object] = {"after": node_memory.measure(runtime)}
    out |= {"served": stats.served, "shed": stats.shed, "errors": stats.errors}
    out |= {"wall_s": round(time.monotonic() - started, 1), "active_rows": active_rows(runtime)}
    out["load_avg_1m"] = round(os.getloadavg()[0], 2)
    if runtime.trainer.running:
        out |= node_memory.trainer_extras(runtime)
        try:
            out["folded_rows"] = node_memory.folded_pages(runtime, dim)[0]
        except TimeoutError as e:  # the snapshot it takes: a starved trainer answers late
            print(f"[{runtime.config.name}] rows folded unknown: {e}", file=sys.stderr, flush=True)
            out["folded_rows"] = "n/a"
    return out


def hourly_samples(args, runtime, replayer, dim: int, started: float) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    """A sample each time the replay has handled another hour's requests, and at its end."""
    per_hour = requests_per_hour(args)
    samples: list[dict[str, object]] = []
    while len(samples) < args.hours:
        time.sleep(0.2)
        s = replayer.stats
        handled = s.served + s.errors + s.shed
        finished = s.exhausted and s.served + s.errors >= s.sent
        if handled >= (len(samples) + 1) * per_hour or finished:
            samples.append(sample(runtime, replayer, dim, started))
            wall = time.monotonic() - started
            print(f"[{args.variant}] hour {len(samples)}: {handled:,} requests, {wall:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
    return samples


def run_replay(args: argparse.Namespace) -> dict[str, object]:
    """One node (--variant) through the whole replay; a sample after each hour's requests."""
    from nodeworker.replayer import ReplayConfig, Replayer

    stream = day_stream(args)
    with node_memory.started_node(args, stream) as runtime:
        model_config = runtime.inference.model.config
        dim = model_config.embedding_dim
        ready = node_memory.measure(runtime)
        delay = args.label_delay * args.qps / args.rate
        config = ReplayConfig(args.rate, delay, args.rows, seed=args.seed)
        started = time.monotonic()
        replayer = Replayer(runtime.predict, runtime.feedback, stream, config).start()
        try:
            samples = hourly_samples(args, runtime, replayer, dim, started)
        finally:  # before the node stops: a request served then would write to closed rings
            replayer.stop()
        result = {
            "variant": args.variant,
            "ready": ready,
            "samples": samples,
            "table_bytes": 4 * dim * sum(model_config.table_sizes),
            "label_delay_at_rate_s": delay,
            "exhausted": replayer.stats.exhausted,
        }
        print(json.dumps(result), flush=True)
        # The node stays up until the parent has both results: the twin's exit unmaps its
        # torch, so the shares of those pages (Pss_File) of a node still sampling its last hour
        # grew by what the twin held (rollup's docstring in bench/node_memory.py).
        sys.stdin.read()
        return result


def spawn(args: argparse.Namespace, variant: str) -> subprocess.Popen:
    command = ["nice", "-n", "19", sys.executable, __file__, "--variant", variant]
    command += ["--workdir", args.workdir]
    for key in ("hours", "qps", "rate", "rows", "label_delay", "seed", "rows_per_table"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    command += ["--budget-pct", str(args.budget_pct)]
    return subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT
    )


def result_line(process: subprocess.Popen) -> str:
    """The node's JSON line (what the node logs to stdout comes before it); "" if it died."""
    for line in process.stdout:  # type: ignore[union-attr]
        if line.startswith('{"variant"'):
            return line
    return ""


def results_of(*processes: subprocess.Popen) -> list[dict]:
    """Each node's result, read while every one of them is still up; then they stop."""
    lines = [result_line(p) for p in processes]
    for p in processes:
        p.communicate("")  # closes its stdin: the node stops
        if p.returncode:
            raise RuntimeError(f"a replay node failed (exit {p.returncode})")
    return [json.loads(line) for line in lines]


def hourly(without: dict, with_: dict, per_hour: int) -> list[dict[str, object]]:
    """Each hour's row: node_memory.summary of the two nodes' samples of that hour."""
    rows = []
    for h, (w, wo) in enumerate(zip(with_["samples"], without["samples"], strict=True), 1):
        pair = {"ready": with_["ready"], "after": w["after"], "table_bytes": with_["table_bytes"]}
        pair |= {"account_slots": w["account_slots"]}
        result = node_memory.summary({"ready": without["ready"], "after": wo["after"]}, pair)
        rows.append(
            {
                "hour": h,
                "replayed_hours": round(w["served"] / per_hour, 3),
                "node_total_bytes": w["after"]["node_total"],
                "node_total_without_bytes": wo["after"]["node_total"],
                **{k: w[k] for k in ("served", "shed", "wall_s", "load_avg_1m", "active_rows")},
                **{k: w[k] for k in ("folded_rows", "versions", "trained_samples", "ranks")},
                # rows the join handed on, less those its backlog dropped: what the trainer took
                "to_trainer": w["feed_counts"].get("taken", 0) - w["dropped_backlog"],
                "dropped_before_training": dropped(w),
                **code_pages(w["after"], wo["after"]),
                **result,
            }
        )
    return rows


def code_pages(with_: dict, without: dict) -> dict[str, int]:
    """The file pages the fixed part holds (the trainer's, and those inference maps only with a
    trainer), by share (Pss_File, as the fixed part counts them) and resident (RssFile)."""
    pss, rss = (
        with_["trainer"][k] + with_["inference"][k] - without["inference"][k]
        for k in ("Pss_File", "RssFile")
    )
    return {"code_pages_pss_bytes": pss, "code_pages_rss_bytes": rss}


def dropped(sample: dict) -> int:
    """Served rows the trainer never trained on: dropped unlabelled or joined (max_pending,
    max_ready) or from its backlog (it fell behind)."""
    counts = sample.get("feed_counts", {})
    return (
        counts.get("dropped_pending", 0)
        + counts.get("dropped_ready", 0)
        + sample["dropped_backlog"]
    )


def verdict(rows: list[dict], budget_pct: float, rows_per_request: int) -> dict[str, object]:
    first, last = rows[0], rows[-1]
    growth = last["node_total_bytes"] / first["node_total_bytes"] - 1
    hours = [r["hour"] for r in rows]
    totals = [r["node_total_bytes"] / MIB for r in rows]
    mean_h, mean_t = sum(hours) / len(hours), sum(totals) / len(totals)
    spread = sum((h - mean_h) ** 2 for h in hours) or 1.0
    slope = sum((h - mean_h) * (t - mean_t) for h, t in zip(hours, totals, strict=True)) / spread
    measured = max(r["proportional_measured_pct_of_tables"] for r in rows)
    accounted = max(r["proportional_accounted_pct_of_tables"] for r in rows)
    return {
        "total_growth_last_vs_hour1": round(growth, 4),
        "tolerance": TOLERANCE,
        "flat": growth <= TOLERANCE,
        "total_slope_mib_per_hour": round(slope, 3),
        "lora_growth_mib": round(
            (last["lora_measured_bytes"] - first["lora_measured_bytes"]) / MIB, 3
        ),
        "max_proportional_measured_pct": measured,
        "max_proportional_accounted_pct": accounted,
        "measured_within_budget": measured <= budget_pct,
        "account_within_budget": accounted <= budget_pct,
        "code_pages_pss_growth_mib": round(
            (last["code_pages_pss_bytes"] - first["code_pages_pss_bytes"]) / MIB, 3
        ),
        "code_pages_rss_growth_mib": round(
            (last["code_pages_rss_bytes"] - first["code_pages_rss_bytes"]) / MIB, 3
        ),
        "shed_requests": last["shed"],
        "events_served": last["served"] * rows_per_request,
        "trained_samples": last["trained_samples"],
        "to_trainer": last["to_trainer"],
        "dropped_before_training": last["dropped_before_training"],
    }


def plot(rows: list[dict], budget_pct: float, title: str) -> Path:
    from plotly.subplots import make_subplots

    hours = [r["replayed_hours"] for r in rows]
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("MiB", "% of tables"))
    for key, name in (("node_total_bytes", "node with trainer"),
                      ("node_total_without_bytes", "node without trainer"),
                      ("lora_measured_bytes", "with - without")):  # fmt: skip
        fig.add_scatter(x=hours, y=[r[key] / MIB for r in rows], name=name, row=1, col=1)
    for key, name in (("proportional_measured_pct_of_tables", "measured"),
                      ("proportional_accounted_pct_of_tables", "account")):  # fmt: skip
        fig.add_scatter(x=hours, y=[r[key] for r in rows], name=name, row=2, col=1)
    fig.add_hline(y=budget_pct, line_dash="dash", row=2, col=1, annotation_text="budget")
    fig.update_layout(title=title, xaxis2_title="replayed hour")
    path = OUT_DIR / "node_replay.html"
    OUT_DIR.mkdir(exist_ok=True)
    fig.write_html(path, include_plotlyjs=True)
    return path


def report(args: argparse.Namespace, without: dict, with_: dict, wall: float) -> None:
    per_hour = requests_per_hour(args)
    rows = hourly(without, with_, per_hour)
    result = verdict(rows, args.budget_pct, args.rows)
    title = (
        f"{args.hours} h of a node at {args.qps:g} req/s x {args.rows} rows, replayed at "
        f"{args.rate:g} req/s ({'sequential' if args.sequential else 'side by side'}), "
        f"two {args.rows_per_table:,}-row tables, {args.budget_pct}% budget"
    )
    header = ["hour", "prop. measured %", "account %", "fixed MiB", "total MiB", "without MiB"]
    header += ["with-without MiB", "folded rows", "active rows", "versions", "to trainer", "load"]
    print_table(
        title,
        header,
        [
            [r["replayed_hours"], r["proportional_measured_pct_of_tables"],
             r["proportional_accounted_pct_of_tables"], r["fixed_bytes"] / MIB,
             r["node_total_bytes"] / MIB, r["node_total_without_bytes"] / MIB,
             r["lora_measured_bytes"] / MIB, r["folded_rows"], r["active_rows"], r["versions"],
             r["to_trainer"], r["load_avg_1m"]]
            for r in rows
        ],
    )  # fmt: skip
    growth = 100 * result["total_growth_last_vs_hour1"]
    print(
        f"\nnode total, hour {rows[-1]['hour']} vs hour 1: {growth:+.2f}% "
        f"(tolerance +{100 * TOLERANCE:.0f}%: {'flat' if result['flat'] else 'NOT flat'}); "
        f"slope {result['total_slope_mib_per_hour']:+.3f} MiB/h; with - without grew "
        f"{result['lora_growth_mib']:+.3f} MiB; the fixed part's file pages: share (Pss) "
        f"{result['code_pages_pss_growth_mib']:+.3f} MiB, resident (Rss) "
        f"{result['code_pages_rss_growth_mib']:+.3f} MiB\nproportional <= {args.budget_pct}% at "
        f"every sample: measured {'yes' if result['measured_within_budget'] else 'NO'} (max "
        f"{result['max_proportional_measured_pct']}%), account "
        f"{'yes' if result['account_within_budget'] else 'NO'} (max "
        f"{result['max_proportional_accounted_pct']}%); {result['shed_requests']:,} requests "
        f"shed; of {result['events_served']:,} events served, {result['to_trainer']:,} reached "
        f"the trainer ({result['dropped_before_training']:,} dropped before; "
        f"{result['trained_samples']:,} samples trained, reuse included); wall {wall / 60:.1f} min"
    )
    drift = id_drift(args)
    print_table(
        "The stream's ids per replayed hour: distinct, and not drawn in any earlier hour",
        ["hour", "user distinct", "user new", "item distinct", "item new"],
        [[d["hour"], d["user_distinct"], d["user_new"], d["item_distinct"], d["item_new"]]
         for d in drift],
    )  # fmt: skip
    payload = {"args": vars(args), "hours": rows, "verdict": result, "wall_s": round(wall, 1)}
    payload["id_drift"] = drift
    payload |= {"without": without, "with": with_}
    write_json("node_replay", payload)
    print(f"wrote {plot(rows, args.budget_pct, title)}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hours", type=int, default=24, choices=range(1, 169), metavar="1..168")
    parser.add_argument("--qps", type=float, default=8.0, help="Q: the replayed node's requests/s")
    parser.add_argument("--rate", type=float, default=400.0, help="R: requests/s of the replay")
    parser.add_argument("--rows", type=int, default=8, help="candidates per request")
    parser.add_argument("--label-delay", type=float, default=2.5, help="seconds at Q")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rows-per-table", type=int, default=1_000_000)
    parser.add_argument("--budget-pct", type=float, default=2.0)
    parser.add_argument("--sequential", action="store_true", help="the two nodes in turn")
    parser.add_argument("--report", type=Path, help="re-print a run's JSON (no replay)")
    parser.add_argument("--variant", choices=("with", "without"), help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not (0 < args.qps <= args.rate <= 1e5 and 1 <= args.rows <= 4096):
        parser.error("need 0 < --qps <= --rate <= 1e5 and 1 <= --rows <= 4096")
    if args.report:
        saved = json.loads(args.report.read_text())
        saved_args = argparse.Namespace(**saved["args"])
        report(saved_args, saved["without"], saved["with"], saved["wall_s"])
        return 0
    if args.variant:  # a child: one node, its JSON line printed while it is still up
        run_replay(args)
        return 0
    from nodeworker.runtime import build_fresh_checkpoint

    requests = requests_per_hour(args) * args.hours
    print(f"{requests:,} requests ({requests * args.rows:,} events) at {args.rate:g} req/s: "
          f"~{requests / args.rate / 60:.0f} min of replay", flush=True)  # fmt: skip
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="node-replay-") as tmp:
        args.workdir = tmp
        build_fresh_checkpoint(day_stream(args).schema, Path(tmp) / "base.ckpt", args.seed)
        if args.sequential:
            (with_,) = results_of(spawn(args, "with"))
            (without,) = results_of(spawn(args, "without"))
        else:
            with_, without = results_of(spawn(args, "with"), spawn(args, "without"))
    report(args, without, with_, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
