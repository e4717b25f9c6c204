"""The evaluated stream on the replay clock: re-timed batches, the pretraining head and the
evaluated rest.

Event i is at ``i / qps`` s (or at its own timestamp minus the first one) and its request id
is its position in the stream. A run reads the stream three times (the head, the first
evaluated batch, the replay) and a worker process runs many, so the re-timed stream is held in
memory per process when it fits ``STREAM_CACHE_BYTES``: parsing a file (~3 CPU-s for
MovieLens-100k) is then paid once per process instead of three times per run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.memo import Memo

OpenStream = Callable[[], Iterable[SparseBatch]]
STREAM_CACHE_BYTES = 768 << 20  # a larger stream is read again at every pass, not held
HELD: Memo[tuple[SparseBatch, ...] | None] = Memo(1)  # None: too large to hold


def retime(batch: SparseBatch, first_index: int, qps: float | None, t0: float) -> SparseBatch:
    """The batch on the replay clock, with request ids = global event positions."""
    n = len(batch)
    ids = torch.arange(first_index, first_index + n, dtype=torch.int64)
    if qps is not None:
        times = ids.to(torch.float64) / qps
    else:
        times = batch.timestamps.to(torch.float64) - t0
    return dataclasses.replace(batch, timestamps=times, request_ids=ids)


def replay_batches(source: Iterable[SparseBatch], qps: float | None) -> Iterator[SparseBatch]:
    """``source`` re-timed onto the replay clock (request ids 0, 1, 2, ...)."""
    index, t0 = 0, None
    for batch in source:
        if len(batch) == 0:
            continue
        if t0 is None:
            t0 = float(batch.timestamps[0])
        yield retime(batch, index, qps, t0)
        index += len(batch)


def replayed(open_stream: OpenStream, qps: float | None) -> Iterable[SparseBatch]:
    """``replay_batches(open_stream(), qps)``, held after the first read when it fits (batches
    are never modified in place, and a reader or the synthetic generator yields the same
    batches at every read)."""
    held = HELD.get((open_stream, qps), lambda: _hold(open_stream, qps))
    return held if held is not None else replay_batches(open_stream(), qps)


def _hold(open_stream: OpenStream, qps: float | None) -> tuple[SparseBatch, ...] | None:
    out, size = [], 0
    for batch in replay_batches(open_stream(), qps):
        size += batch.nbytes
        if size > STREAM_CACHE_BYTES:
            return None
        out.append(batch)
    return tuple(out)


def split_at(batch: SparseBatch, k: int) -> tuple[SparseBatch, SparseBatch]:
    return batch.select(torch.arange(k)), batch.select(torch.arange(k, len(batch)))


def head_batches(open_stream: OpenStream, qps: float | None, n: int) -> Iterator[SparseBatch]:
    """The first ``n`` events of the replayed stream (the last batch split if needed)."""
    seen = 0
    for batch in replayed(open_stream, qps):
        if seen >= n:
            return
        if seen + len(batch) > n:
            batch = split_at(batch, n - seen)[0]
        seen += len(batch)
        yield batch


def eval_batches(open_stream: OpenStream, qps: float | None, n: int) -> Iterator[SparseBatch]:
    """The replayed stream after its first ``n`` events."""
    seen = 0
    for batch in replayed(open_stream, qps):
        if seen + len(batch) <= n:
            seen += len(batch)
            continue
        if seen < n:
            batch = split_at(batch, n - seen)[1]
        seen = n + 1
        yield batch


def first_eval_batch(open_stream: OpenStream, qps: float | None, n: int) -> SparseBatch:
    first = next(eval_batches(open_stream, qps, n), None)
    if first is None:
        raise ValueError("no events left after pretraining; lower pretrain_fraction")
    return first
