"""Running an experiment's configurations in parallel worker processes (``--jobs``).

Each configuration (one seed of one sweep point or fleet shape) is an independent, seeded
replay, so runs can go to separate processes and come back as ``RunSummary`` (plain data);
the numbers are the same as a serial run's given the same torch thread count per run
(tests/integration/test_experiment_jobs.py checks it). Workers are spawned, not forked (a
forked torch with a used OpenMP pool can hang), and each re-opens the stream from its flags.

A worker that dies (killed, out of memory) fails the whole command with
concurrent.futures.process.BrokenProcessPool instead of hanging.

Threads: ``jobs`` x ``threads`` <= the usable cores; by default jobs = the usable cores and
threads = cores // jobs (at least 1).
"""

from __future__ import annotations

import argparse
import dataclasses
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


def run_config(
    source: StreamSource, config: ExperimentConfig, progress: Callable[[int], None] | None = None
) -> RunSummary:
    from dlrm_core.experiment.harness import run_experiment

    cpu = time.process_time()
    run = run_experiment(source.schema, source.open, source.num_events, config, progress)
    return dataclasses.replace(summarise_run(run), process_cpu_seconds=time.process_time() - cpu)


_WORKER_SOURCE: list[StreamSource] = []  # the stream a worker process opened once


def _init_worker(spec: StreamSpec) -> None:
    _WORKER_SOURCE.append(spec.open())


def _run_in_worker(item: tuple[int, ExperimentConfig]) -> tuple[int, RunSummary]:
    index, config = item
    return index, run_config(_WORKER_SOURCE[0], config)


def run_all(
    spec: StreamSpec,
    source: StreamSource,
    tasks: Sequence[tuple[K, ExperimentConfig]],
    jobs: int,
    on_done: Callable[[K, RunSummary, float], None],
    progress: Callable[[int], None] | None = None,
) -> dict[K, list[RunSummary]]:
    """Every task's summary, grouped by key in task order; ``on_done(key, summary, seconds)``
    as each finishes. ``jobs`` 1 runs here (``progress`` counts events); more, in workers."""
    out: list[RunSummary | None] = [None] * len(tasks)
    start = time.perf_counter()
    if jobs == 1 or len(tasks) == 1:
        for i, (key, config) in enumerate(tasks):
            out[i] = run_config(source, config, progress)
            on_done(key, out[i], time.perf_counter() - start)  # type: ignore[arg-type]
    else:
        context = multiprocessing.get_context("spawn")
        workers = min(jobs, len(tasks))
        pool = ProcessPoolExecutor(workers, context, _init_worker, (spec,))
        try:
            futures = [pool.submit(_run_in_worker, (i, c)) for i, (_, c) in enumerate(tasks)]
            for future in as_completed(futures):
                i, summary = future.result()  # a worker's error is raised here
                out[i] = summary
                on_done(tasks[i][0], summary, time.perf_counter() - start)
        finally:  # on an error or ^C: drop the queued runs, do not wait for them
            pool.shutdown(wait=True, cancel_futures=True)
    grouped: dict[K, list[RunSummary]] = {}
    for (key, _), done in zip(tasks, out, strict=True):
        assert done is not None
        grouped.setdefault(key, []).append(done)
    return grouped
