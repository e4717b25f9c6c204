"""Inference P99 next to the co-located trainer, side by side in one run (issue 5, item 8):

  (a) inference alone (pinned to its cores, no trainer)
  (b) inference + trainer, no pinning and no QoS (the trainer runs flat out on any core)
  (c) inference + trainer pinned to disjoint cores, throttled by the QoS controller
  (d) as (c), but the trainer learns at full duty during the warm-up only and is paused for the
      measurement: inference serves the version it learnt (the low-rank correction's own cost
      on the request path) and nothing feeds or installs

First the node's maximum throughput is measured (inference alone) by the replayer sending as
fast as it can: the same in-process threads that replay the variants, so their own cost counts
(a single-thread closed loop measured about twice what the replayer's threads can drive, and
"half of it" was then a saturated node); then every variant is replayed open-loop (Poisson
arrivals) at --load x that maximum on the synthetic stream, labels arriving --label-delay s
after serving. Latency counts from each request's
scheduled arrival. The SLA for (c) is --sla-factor x P99(a): the operator's target.
Each variant runs in a fresh process (pinning and torch thread pools do not leak between them).
Beside latency, each row says where the inference process's time went: "svc p99" is the P99 of
the time a request held the inference lock (the model itself; the rest of its latency is
queueing), "gc max" the longest garbage-collector pause, "installs" / "inst ms" the factor
versions installed and the mean time to copy one out of shared memory (off the inference lock;
the trainer builds it), "trn cpu" the trainer process's cpu share, "cpu/req" the inference
process's cpu time per served request (all its threads, the replayer's included; load inflates
it less than latency), and "rq ms/s" how long the inference process's threads waited for a cpu
while runnable, per second: near 0 on a quiet machine, large when other jobs share the
inference cpu (such a pass says nothing about the trainer).
Prints a table and writes bench/out/node_qos.json.

    python bench/node_qos_bench.py [--duration 30] [--warmup 5] [--load 0.5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STREAM = dict(
    num_events=10**8, user_rows=200_000, item_rows=50_000, context_rows=(1000, 50), n_dense=4
)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def run_queue_wait_s() -> float | None:
    """Seconds this process's threads have waited for a cpu while runnable (Linux schedstat):
    how much other work on the inference cpu delayed it. None where it is not available."""
    total = 0.0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None
    return total


def cpu_seconds(pid: int) -> float | None:
    """User + system cpu seconds of a process (Linux /proc)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def thread_cpu_s() -> dict[str, float]:
    """User + system cpu seconds of each live Python thread of this process, by thread name
    (threads of one role summed: replay_serve-2, replay_serve-3 as replay_serve-N), Linux /proc."""
    import re
    import threading

    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for thread in threading.enumerate():
        try:
            with open(f"/proc/self/task/{thread.native_id}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        name = re.sub(r"-\d+$", "-N", thread.name)
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


def join_cpu_s(runtime) -> float | None:
    """The trainer process's cpu seconds on the label join so far (None without a trainer)."""
    stats = runtime.trainer.last_stats
    return None if stats is None else stats.feed_cpu_s


def start_runtime(args: argparse.Namespace):
    """The variant's node (trainer, pinning and QoS as the variant says), ready, and its
    stream."""
    from dlrm_core.synthetic import SyntheticConfig, SyntheticStream
    from nodeworker import protocol
    from nodeworker.runtime import NodeRuntime, RuntimeConfig, build_fresh_checkpoint

    stream = SyntheticStream(SyntheticConfig(seed=args.seed, **STREAM))
    work = Path(args.workdir)
    checkpoint = work / "base.ckpt"
    if not checkpoint.exists():
        build_fresh_checkpoint(stream.schema, checkpoint, args.seed)
    policy, errors = protocol.validate_policy({"sla_p99_ms": args.sla_ms})
    assert policy is not None, errors
    variant = args.variant
    runtime = NodeRuntime(
        RuntimeConfig(
            name=f"bench-{variant}",
            data_dir=work / f"node-{variant}",
            checkpoint=str(checkpoint),
            policy=policy,
            trainer=variant != "a",
            pin=variant != "b",
            qos=variant == "c",
            label_window_s=30.0,
            snapshot_interval_s=3600,
        )
    ).start()
    runtime.wait_ready()
    return runtime, stream


def run_variant(args: argparse.Namespace) -> dict:
    """One variant in this process; returns its measurements."""
    from nodeworker.replayer import ReplayConfig, Replayer

    runtime, stream = start_runtime(args)
    try:
        config = ReplayConfig(
            qps=1e6 if args.measure_max else args.qps,
            label_delay_s=args.label_delay,
            rows_per_request=args.rows,
            seed=args.seed,
        )
        replayer = Replayer(runtime.predict, runtime.feedback, stream, config).start()
        time.sleep(args.warmup)
        if args.measure_max:  # saturated: the most the replayer's threads get served per second
            served, start = replayer.stats.served, time.perf_counter()
            time.sleep(5.0)
            max_qps = (replayer.stats.served - served) / (time.perf_counter() - start)
            replayer.stop()
            return {"max_qps": max_qps}
        if args.variant == "d":
            runtime.operations.pause()
            time.sleep(1.0)  # the last version published before the pause gets installed
        result = measure_pass(args, runtime)
        replayer.stop()
        return result
    finally:
        runtime.stop()


@dataclass
class Counters:
    """The cpu and scheduler counters a pass is measured between."""

    queue_wait_s: float | None
    process_cpu_s: float
    threads_cpu_s: dict[str, float]
    trainer_cpu_s: float | None
    join_cpu_s: float | None

    @classmethod
    def read(cls, runtime, trainer_pid: int | None) -> Counters:
        return cls(
            queue_wait_s=run_queue_wait_s(),
            process_cpu_s=time.process_time(),
            threads_cpu_s=thread_cpu_s(),
            trainer_cpu_s=cpu_seconds(trainer_pid) if trainer_pid else None,
            join_cpu_s=join_cpu_s(runtime),
        )


def per_second(
    before: float | None, after: float | None, elapsed: float, scale: float = 1.0, digits: int = 3
) -> float | None:
    """(after - before) * scale per second of the pass; None when a counter is missing."""
    if before is None or after is None:
        return None
    return round(scale * (after - before) / elapsed, digits)


def measure_pass(args: argparse.Namespace, runtime) -> dict:
    """args.duration seconds of the replay already running: latencies, training and cpu."""
    import numpy as np

    runtime.metrics.all_latencies.clear()
    runtime.metrics.all_service_ms.clear()
    base_counts = runtime.operations.feed_counts()
    base_trained = runtime.metrics.trained_samples
    started = time.time()
    trainer_pid = runtime.trainer.pid
    before = Counters.read(runtime, trainer_pid)
    duties, states = [], []
    while time.time() - started < args.duration:
        time.sleep(0.5)
        if runtime.qos.last is not None:
            states.append(runtime.qos.last.state)
        duties.append(runtime.trainer.duty)
    elapsed = time.time() - started
    after = Counters.read(runtime, trainer_pid)
    latencies = list(runtime.metrics.all_latencies)
    service = list(runtime.metrics.all_service_ms)
    counts = runtime.operations.feed_counts()
    labelled = (counts["joined"] + counts["expired"]) - (
        base_counts["joined"] + base_counts["expired"]
    )
    trained = runtime.metrics.trained_samples - base_trained
    lags = runtime.metrics.lags(since=started)
    return {
        "variant": args.variant,
        "target_qps": args.qps,
        "achieved_qps": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p95_ms": round(percentile(latencies, 95), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
        # under the inference lock: the model itself, without queueing behind other work
        "service_p50_ms": round(percentile(service, 50), 3),
        "service_p99_ms": round(percentile(service, 99), 3),
        **runtime.metrics.stalls(since=started),
        "requests": len(latencies),
        "labelled_rows": labelled,
        "trained_rows": trained,
        "trained_share": round(trained / labelled, 3) if labelled else None,
        "median_freshness_lag_s": round(float(np.median(lags)), 3) if lags else None,
        "mean_trainer_duty": round(sum(duties) / len(duties), 3) if duties else 0.0,
        "paused_share": round(states.count("paused") / len(states), 3) if states else None,
        **cpu_fields(before, after, elapsed, len(latencies)),
        "placement": runtime.state.plan.as_dict(),
        "sla_ms": args.sla_ms if args.variant == "c" else None,
        "load_avg_1m": os.getloadavg()[0],  # other work on the machine during the run
    }


def cpu_fields(before: Counters, after: Counters, elapsed: float, requests: int) -> dict:
    return {
        "trainer_cpu_share": per_second(before.trainer_cpu_s, after.trainer_cpu_s, elapsed),
        # the trainer process's thread cpu on the label join (the feed), per second
        "trainer_join_cpu_share": per_second(before.join_cpu_s, after.join_cpu_s, elapsed),
        "cpu_per_request_us": (
            round(1e6 * (after.process_cpu_s - before.process_cpu_s) / requests, 1)
            if requests
            else None
        ),
        # per thread (name), cpu ms per second of the pass: where "cpu/req" goes
        "thread_cpu_ms_per_s": {
            name: round(1000 * (cpu - before.threads_cpu_s.get(name, 0.0)) / elapsed, 1)
            for name, cpu in after.threads_cpu_s.items()
        },
        # waiting for a cpu while runnable, summed over the inference process's threads:
        # near 0 on a quiet machine; large values mean other jobs shared the inference cpu
        "run_queue_wait_ms_per_s": per_second(
            before.queue_wait_s, after.queue_wait_s, elapsed, scale=1000.0, digits=1
        ),
    }


def spawn(args: argparse.Namespace, variant: str, **extra) -> dict:
    command = [sys.executable, __file__, "--variant", variant, "--workdir", args.workdir]
    for key in ("duration", "warmup", "rows", "label_delay", "seed"):
        command += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    for key, value in extra.items():
        command += [f"--{key.replace('_', '-')}"] + ([] if value is True else [str(value)])
    out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


NAMES = {
    "a": "(a) no trainer",
    "b": "(b) trainer, no pin/QoS",
    "c": "(c) pinned + QoS",
    "d": "(d) pinned, trainer paused",
}


def print_header() -> None:
    print(
        f"{'pass':>4} {'variant':26} {'qps':>7} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'p99/p99a':>9} {'svc p99':>8} {'trained':>8} {'lag s':>6} {'duty':>5} "
        f"{'trn cpu':>7} {'gc max':>7} {'installs':>8} {'inst ms':>7} {'cpu/req':>7} "
        f"{'rq ms/s':>7} {'load':>5}"
    )


def print_row(k: int, r: dict, p99_a: float) -> None:
    print(
        f"{k:>4} {NAMES[r['variant']]:26} {r['achieved_qps']:>7} {r['p50_ms']:>8} "
        f"{r['p99_ms']:>8} {r['p99_ms'] / p99_a:>9.2f} "
        f"{r['service_p99_ms']:>8} "
        f"{str(r['trained_share']):>8} {str(r['median_freshness_lag_s']):>6} "
        f"{r['mean_trainer_duty']:>5} {str(r['trainer_cpu_share']):>7} "
        f"{r['gc_pause_max_ms']:>7} {r['installs']:>8} {r['install_read_mean_ms']:>7} "
        f"{str(r['cpu_per_request_us']):>7} {str(r['run_queue_wait_ms_per_s']):>7} "
        f"{r['load_avg_1m']:>5}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--load", type=float, default=0.5, help="share of the max throughput")
    parser.add_argument("--rows", type=int, default=8, help="candidates per request")
    parser.add_argument("--label-delay", type=float, default=0.5)
    parser.add_argument("--sla-factor", type=float, default=1.15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="passes of a, b, c, d (interleaved)")
    parser.add_argument("--variant", choices=("a", "b", "c", "d"), help=argparse.SUPPRESS)
    parser.add_argument("--measure-max", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--qps", type=float, default=100.0, help=argparse.SUPPRESS)
    parser.add_argument("--sla-ms", type=float, default=50.0, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:  # a child: one variant, JSON on the last line
        print(json.dumps(run_variant(args)))
        return 0
    passes = []
    with tempfile.TemporaryDirectory(prefix="node-qos-") as tmp:
        args.workdir = tmp
        max_qps = spawn(args, "a", measure_max=True)["max_qps"]
        qps = round(args.load * max_qps, 1)
        print(f"max {max_qps:.0f} req/s ({args.rows} rows each) saturated; replay {qps} req/s")
        print_header()
        for k in range(args.repeat):
            a = spawn(args, "a", qps=qps)
            sla = round(args.sla_factor * a["p99_ms"], 3)
            rows = [a] + [spawn(args, v, qps=qps, sla_ms=sla) for v in ("b", "c", "d")]
            for r in rows:
                r["load_avg_1m"] = round(r.pop("load_avg_1m"), 2)
                print_row(k, r, a["p99_ms"])
            passes.append(
                {
                    "sla_ms_c": sla,
                    "variants": rows,
                    "p99_ratio_c_over_a": round(rows[2]["p99_ms"] / a["p99_ms"], 3),
                    "p99_ratio_b_over_a": round(rows[1]["p99_ms"] / a["p99_ms"], 3),
                    "p99_ratio_d_over_a": round(rows[3]["p99_ms"] / a["p99_ms"], 3),
                }
            )
    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": {k: v for k, v in vars(args).items() if k not in ("variant", "workdir")},
        "max_qps": max_qps,
        "qps": qps,
        "passes": passes,
    }
    out = ROOT / "bench" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "node_qos.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out / 'node_qos.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
