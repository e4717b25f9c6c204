"""Running an experiment's configurations in parallel worker processes (``--jobs``).

Each configuration (one seed of one sweep point or fleet shape) is a seeded replay; the
configurations of a bundle (plan.bundles: one seed and shape, several sync periods) share one
replay and its cluster (harness.run_bundle). Bundles go to separate processes and come back as
``RunSummary`` lists (plain data); the numbers are the same as a serial run's given the same
torch thread count per run (tests/integration/test_experiment_jobs.py checks it). Workers are
spawned, not forked (a forked torch with a used OpenMP pool can hang), and each re-opens the
stream from its flags.

A worker that dies (killed, out of memory) fails the whole command with
concurrent.futures.process.BrokenProcessPool instead of hanging.

Threads: ``jobs`` x ``threads`` <= the usable cores; by default jobs = the usable cores and
threads = cores // jobs (at least 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from typing import TypeVar

from dlrm_core.commands import stream_args
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.data import StreamSource, open_source
from dlrm_core.experiment.run_summary import RunSummary, summarise_run
from dlrm_core.synthetic import SyntheticConfig

MAX_JOBS = 64
MAX_THREADS = 256
K = TypeVar("K")


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


def resolve_jobs(jobs: int | None, threads: int | None) -> tuple[int, int]:
    """(worker processes, torch threads per run); ValueError (one line) when they would
    oversubscribe the usable cores."""
    cores = usable_cores()
    j = min(cores, MAX_JOBS) if jobs is None else jobs
    t = max(1, cores // j) if threads is None else threads
    if not (1 <= j <= MAX_JOBS and 1 <= t <= MAX_THREADS):
        raise ValueError(f"--jobs must be in [1, {MAX_JOBS}] and --threads in [1, {MAX_THREADS}]")
    if t > 1 and j * t > cores:
        raise ValueError(
            f"--jobs {j} x --threads {t} = {j * t} threads > {cores} usable cores; "
            f"lower --threads to {max(1, cores // j)}"
        )
    return j, t


@dataclass(frozen=True)
class StreamSpec:
    """How to open the stream again in a worker: the command's data flags, and what the
    parent's one counting pass found."""

    args: argparse.Namespace
    num_events: int
    info: dict  # type: ignore[type-arg]

    def open(self) -> StreamSource:
        a = self.args
        if a.format == "synthetic":
            return synthetic_source(a)
        reader = stream_args.open_stream(a)
        return StreamSource(reader.schema, lambda: iter(reader), self.num_events, self.info)


def synthetic_source(args: argparse.Namespace) -> StreamSource:
    synthetic = SyntheticConfig(
        seed=args.seed, num_events=args.events, batch_size=args.batch_size,
        events_per_second=args.qps, user_rows=args.user_rows, item_rows=args.item_rows,
        drift_per_hour=args.drift_per_hour,
    )  # fmt: skip
    return open_source("synthetic", None, args.batch_size, args.max_events, synthetic=synthetic)


def run_configs(
    source: StreamSource,
    configs: Sequence[ExperimentConfig],
    progress: Callable[[int], None] | None = None,
) -> list[RunSummary]:
    """One replay of ``configs`` (a bundle, harness.run_bundle): a summary each, the bundle's
    CPU time shared evenly among them (their sum is the bundle's)."""
    from dlrm_core.experiment.harness import run_bundle

    cpu = time.process_time()
    runs = run_bundle(source.schema, source.open, source.num_events, configs, progress)
    share = (time.process_time() - cpu) / len(runs)
    out = [dataclasses.replace(summarise_run(r), process_cpu_seconds=share) for r in runs]
    # a replay's models sit in reference cycles (the cluster's listeners are its strategies'
    # bound methods, a rank controller is its table's gradient observer): free them now, not
    # at some later collection, or the next replay's models pile on them (6.2 GB measured)
    del runs
    gc.collect()
    return out


_WORKER_SOURCE: list[StreamSource] = []  # the stream a worker process opened once


def _init_worker(spec: StreamSpec) -> None:
    _WORKER_SOURCE.append(spec.open())


def _run_in_worker(
    item: tuple[int, tuple[ExperimentConfig, ...]],
) -> tuple[int, list[RunSummary]]:
    index, configs = item
    return index, run_configs(_WORKER_SOURCE[0], configs)


Bundle = Sequence[tuple[K, ExperimentConfig]]  # configurations replayed together


def run_all(
    spec: StreamSpec,
    source: StreamSource,
    bundles: Sequence[Bundle[K]],
    jobs: int,
    on_done: Callable[[K, RunSummary, float], None],
    progress: Callable[[int], None] | None = None,
) -> dict[K, list[RunSummary]]:
    """Every configuration's summary, grouped by key in bundle order; ``on_done(key, summary,
    seconds)`` as each bundle finishes. ``jobs`` 1 runs here (``progress`` counts events);
    more, in workers, one bundle at a time each."""
    out: list[list[RunSummary]] = [[] for _ in bundles]
    start = time.perf_counter()

    def finished(i: int, summaries: list[RunSummary]) -> None:
        out[i] = summaries
        for (key, _), summary in zip(bundles[i], summaries, strict=True):
            on_done(key, summary, time.perf_counter() - start)

    if jobs == 1 or len(bundles) == 1:
        for i, bundle in enumerate(bundles):
            finished(i, run_configs(source, [c for _, c in bundle], progress))
    else:
        context = multiprocessing.get_context("spawn")
        workers = min(jobs, len(bundles))
        pool = ProcessPoolExecutor(workers, context, _init_worker, (spec,))
        try:
            futures = [pool.submit(_run_in_worker, (i, tuple(c for _, c in b)))
                       for i, b in enumerate(bundles)]  # fmt: skip
            for future in as_completed(futures):
                finished(*future.result())  # a worker's error is raised here
        finally:  # on an error or ^C: drop the queued runs, do not wait for them
            pool.shutdown(wait=True, cancel_futures=True)
    grouped: dict[K, list[RunSummary]] = {}
    for bundle, done in zip(bundles, out, strict=True):
        for (key, _), summary in zip(bundle, done, strict=True):
            grouped.setdefault(key, []).append(summary)
    return grouped
