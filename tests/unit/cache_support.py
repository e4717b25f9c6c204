"""Feeding a SampleCache whole SparseBatches, as the tests build them (the node's feed hands it
numpy arrays read from its ring: SampleCache.put_arrays)."""

from __future__ import annotations

from dlrm_core.batch import SparseBatch
from nodeworker.sample_cache import SampleCache


def put_batch(cache: SampleCache, batch: SparseBatch, now: float | None = None) -> None:
    """Keep a served batch; its request ids must be new and larger than any seen before."""
    cache.put_arrays(
        batch.keys,
        tuple(v.numpy() for v in batch.values),
        tuple(o.numpy() for o in batch.offsets),
        batch.dense.numpy(),
        batch.timestamps.numpy(),
        batch.request_ids.numpy(),
        now,
    )
