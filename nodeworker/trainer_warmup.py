"""The trainer process's one-time allocations, made before it reports ready.

The first training steps of a process allocate what no later step does again: torch's intra-op
thread pool and its threads' stacks and malloc arena, the autograd engine's per-thread state,
the training kernel's and the dispatcher's lazily built tables, the Python objects of modules
imported and functions first called on that path. Measured on a node with two 10^6-row tables
(bench/node_memory.py), the trainer's anonymous memory grew ~3.1 MiB in its first steps at
every budget (1%, 2%, 4% of the tables: the same 3.1-3.2 MiB beyond its account), i.e. an
intercept, not a slope. They are the runtime's, so the node pays them when the trainer starts:
``warm_up`` trains a throwaway LiveTrainer, built like the node's over a model of the same
shape with tiny tables, on random batches, publishes its factors as a node would (the serving
layout too), and drops it. The node's own trainer, model and factors are not touched.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.serving import ServingDelta

if TYPE_CHECKING:
    from dlrm_core.trainer import TrainerConfig

WARMUP_ROWS = 4096  # rows of each throwaway table
WARMUP_SEED = 0


def warmup_batch(config: DLRMConfig, rows: int, generator: torch.Generator) -> SparseBatch:
    """``rows`` random samples, one id a feature, for a model of ``config``'s shape."""
    n = len(config.feature_names)
    return SparseBatch(
        config.feature_names,
        tuple(
            torch.randint(0, size, (rows,), generator=generator, dtype=torch.int64)
            for size in config.table_sizes
        ),
        tuple(torch.arange(rows, dtype=torch.int64) for _ in range(n)),
        torch.randn(rows, config.n_dense, generator=generator),
        torch.randint(0, 2, (rows,), generator=generator).float(),
        torch.zeros(rows, dtype=torch.float64),
        torch.arange(rows, dtype=torch.int64),
    )


def warm_up(
    config: DLRMConfig,
    trainer_config: TrainerConfig,
    budgets: Mapping[str, int],
    batch_rows: int,
    steps: int,
) -> int:
    """Train a throwaway LiveTrainer shaped like the node's (``trainer_config``, ``budgets``)
    for ``steps`` steps of ``batch_rows`` random rows, publishing a version at the end; returns
    the steps it took. Everything it built is freed before it returns."""
    from dlrm_core.trainer import LiveTrainer

    small = replace(config, table_sizes=tuple(WARMUP_ROWS for _ in config.table_sizes))
    generator = torch.Generator().manual_seed(WARMUP_SEED)
    with torch.random.fork_rng(devices=[]):  # the node's trainer draws as if none ran
        trainer = LiveTrainer(DLRM(small), trainer_config, budgets)
        for step in range(steps):
            trainer.train_step(warmup_batch(small, batch_rows, generator), float(step))
        version = trainer.publish()
        ServingDelta.from_factors(1, small.feature_names, small.table_sizes, version.tables)
    taken = trainer.stats.steps
    del trainer, version
    gc.collect()
    return taken
