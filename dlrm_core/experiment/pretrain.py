"""The base model every strategy of a replay starts from: trained on the stream's head.

While it trains, each table's gradient energy is measured on the head's last ``TUNE_SHARE``
(first epoch, so on events the model had not seen), and the rows the head touched are counted,
for LiveUpdate's budget split. The base is
memoised per process: runs of one plan that share the stream, the seed and the head's training
settings train it once. It is never modified after pretraining (every strategy and the cluster
copy it), and the harness reseeds torch after pretraining, so a memoised base gives the same
numbers as a fresh one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.liveupdate import gradient_energy
from dlrm_core.experiment.memo import Memo
from dlrm_core.experiment.stream import OpenStream, head_batches
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.schema import StreamSchema
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

TUNE_SHARE = 0.2  # last share of the pretraining head on which the budget split is measured


@dataclass(frozen=True)
class Pretrained:
    """The base model trained on the head, and what the replay starts from."""

    model: DLRM
    train_config: FullTrainConfig
    benefit: dict[str, float]
    head_rows: dict[str, int]  # each table's distinct rows the head touched
    events: int
    newest_event_s: float
    last_id: int
    # the pretraining optimizers' state (Adagrad's accumulators): the cluster continues from it
    # as a training cluster continues its own run, instead of restarting its optimizer
    optimizer_state: dict[str, Any]


PRETRAINED: Memo[Pretrained] = Memo(3)  # the bases of the last few (stream, seed, head) keys


def build_model(schema: StreamSchema, config: ExperimentConfig) -> DLRM:
    torch.manual_seed(config.seed)
    dlrm_config = DLRMConfig.from_schema(
        schema, config.embedding_dim, config.bottom_hidden, config.top_hidden
    )
    return DLRM(dlrm_config)


def pretrained(
    schema: StreamSchema,
    open_stream: OpenStream,
    num_events: int,
    config: ExperimentConfig,
    progress: Callable[[int], None] | None,
) -> Pretrained:
    """The pretrained base for this stream and config, trained once per process (memoised)."""
    key = (open_stream, num_events, config.seed, config.qps, config.pretrain_fraction,
           config.pretrain_epochs, config.optimizer, config.lr_dense, config.lr_sparse,
           config.embedding_dim, config.bottom_hidden, config.top_hidden)  # fmt: skip
    hits = PRETRAINED.hits
    pre = PRETRAINED.get(key, lambda: pretrain(schema, open_stream, num_events, config,
                                               progress))  # fmt: skip
    if progress and PRETRAINED.hits > hits:
        progress(pre.events)
    return pre


def pretrain(
    schema: StreamSchema,
    open_stream: OpenStream,
    num_events: int,
    config: ExperimentConfig,
    progress: Callable[[int], None] | None = None,
) -> Pretrained:
    """Train the base model on the head; measure each table's gradient energy on the head's
    last ``TUNE_SHARE`` (first epoch) for LiveUpdate's budget split."""
    n_pre = int(num_events * config.pretrain_fraction)
    tune_from = n_pre - max(1, int(n_pre * TUNE_SHARE))
    model = build_model(schema, config)
    full_cfg = FullTrainConfig(
        optimizer=config.optimizer, lr_dense=config.lr_dense, lr_sparse=config.lr_sparse
    )
    trainer = FullSparseTrainer(model, full_cfg)
    benefit = dict.fromkeys(schema.keys, 0.0)
    touched = {name: torch.zeros(n, dtype=torch.bool) for name, n in
               zip(model.config.feature_names, model.config.table_sizes, strict=True)}  # fmt: skip
    head: list[SparseBatch] = []
    seen, newest, last_id = 0, -math.inf, -1
    for batch in head_batches(open_stream, config.qps, n_pre):
        result = trainer.step(batch)
        for name, (rows, _) in result.touched.items():
            touched[name][rows] = True
        if seen >= tune_from:
            for name, energy in gradient_energy(result.touched).items():
                benefit[name] += energy
        if config.pretrain_epochs > 1:
            head.append(batch)
        seen += len(batch)
        newest = float(batch.timestamps.max())
        last_id = int(batch.request_ids.max())
        if progress:
            progress(len(batch))
    for _ in range(config.pretrain_epochs - 1):
        for batch in head:
            trainer.step(batch)
    head_rows = {name: int(flags.sum()) for name, flags in touched.items()}
    state = trainer.optimizer_state()
    return Pretrained(model, full_cfg, benefit, head_rows, n_pre, newest, last_id, state)
