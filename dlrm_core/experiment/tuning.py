"""Tuning on the head of the stream only (never on the evaluated windows).

The head (the pretraining part) is split 80/20. For each candidate learning rate of the
cluster's optimizer (pretraining's too, dense and sparse alike) a fresh model trains on the
first 80%, then is scored progressively on the last 20% (each batch scored, then trained on
once its labels are due: the run's label delay, as for LiveUpdate below). The best rate by
AUC there wins. Then, from the model pretrained with it, LiveUpdate's
A learning rate is chosen the same way: LiveUpdate alone replays the last 20% with the
experiment's label delay; then its B learning rate, its rank energy share tau and its rank cap
r_max likewise, one knob at a time, each from the best so far. The log (results.json's
``tuning``) keeps every candidate's validation AUC and the chosen values.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.config import ExperimentConfig, LiveUpdateParams
from dlrm_core.experiment.liveupdate import (
    LiveUpdate,
    gradient_energy,
    table_budgets,
)
from dlrm_core.experiment.pretrain import build_model
from dlrm_core.experiment.stream import replay_batches, split_at
from dlrm_core.metrics import auc
from dlrm_core.model import DLRM
from dlrm_core.schema import StreamSchema
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

LR_GRID = {"adagrad": (0.01, 0.03, 0.1, 0.3), "sgd": (0.1, 0.5, 1.0, 2.0)}
LR_A_GRID = (0.01, 0.05, 0.2)
LR_B_GRID = (1e-4, 1e-3, 1e-2)
TAU_GRID = (0.8, 0.9, 0.95, 0.99)
R_MAX_GRID = (4, 8, 16)


def _head(stream: Iterator[SparseBatch], n: int) -> list[SparseBatch]:
    out, seen = [], 0
    for batch in stream:
        if seen + len(batch) >= n:
            out.append(split_at(batch, n - seen)[0] if seen + len(batch) > n else batch)
            break
        out.append(batch)
        seen += len(batch)
    return out


def tune(
    schema: StreamSchema,
    open_stream: Callable[[], Iterable[SparseBatch]],
    num_events: int,
    config: ExperimentConfig,
    lr_grid: tuple[float, ...] | None = None,
    lr_a_grid: tuple[float, ...] = LR_A_GRID,
    lr_b_grid: tuple[float, ...] = LR_B_GRID,
    tau_grid: tuple[float, ...] = TAU_GRID,
    r_max_grid: tuple[int, ...] = R_MAX_GRID,
) -> tuple[ExperimentConfig, dict[str, Any]]:
    """The config with the tuned lr_dense = lr_sparse and live.lr_a, lr_b, tau, r_max (shared
    by every local learner), and a tuning log."""
    lr_grid = lr_grid or LR_GRID[config.optimizer]
    n_head = int(num_events * config.pretrain_fraction)
    head = _head(replay_batches(open_stream(), config.qps), n_head)
    cut = int(0.8 * sum(len(b) for b in head))
    fit, tail = _split_events(head, cut)
    if not fit or not tail:
        raise ValueError("the pretraining head is too short to tune on; raise pretrain_fraction")
    log: dict[str, Any] = {
        "split": "the pretraining head: fit on its first 80%, validate on the rest",
        "head_events": n_head, "fit_events": cut, "lr": {}, "lr_a": {},
    }  # fmt: skip
    best_lr, best_auc, best_model, benefit = lr_grid[0], -1.0, None, {}
    for lr in lr_grid:
        score, base, energy = _cluster_lr_score(schema, config, fit, tail, lr)
        log["lr"][str(lr)] = score
        if score > best_auc:
            best_lr, best_auc, best_model, benefit = lr, score, base, energy
    assert best_model is not None
    live = config.live
    local = {"liveupdate", "liveupdate_dense", "hybrid"} & set(config.strategies)
    if local:
        # one knob at a time, each from the best so far
        knobs = (("lr_a", lr_a_grid), ("lr_b", lr_b_grid), ("tau", tau_grid),
                 ("r_max", r_max_grid))  # fmt: skip
        for knob, grid in knobs:
            candidates = [_with(live, knob, value) for value in grid]
            scores = [_live_tail_auc(best_model, tail, config, c, benefit) for c in candidates]
            log[knob] = {str(v): a for v, a in zip(grid, scores, strict=True)}
            live = candidates[int(np.argmax(scores))]
    tuned = dataclasses.replace(config, lr_dense=best_lr, lr_sparse=best_lr, live=live)
    log["chosen"] = {"lr_dense": best_lr, "lr_sparse": best_lr, "lr_a": live.lr_a,
                     "lr_b": live.lr_b, "tau": live.tau, "r_max": live.r_max}  # fmt: skip
    return tuned, log


def _cluster_lr_score(
    schema: StreamSchema,
    config: ExperimentConfig,
    fit: list[SparseBatch],
    tail: list[SparseBatch],
    lr: float,
) -> tuple[float, DLRM, dict[str, float]]:
    """Pretrain on ``fit`` at ``lr``, then score ``tail`` progressively (learning each batch once
    its label is due): (AUC, the pretrained base, each table's gradient energy on the tail)."""
    model = build_model(schema, config)
    full = FullTrainConfig(optimizer=config.optimizer, lr_dense=lr, lr_sparse=lr)
    trainer = FullSparseTrainer(model, full)
    for _ in range(config.pretrain_epochs):
        for batch in fit:
            trainer.step(batch)
    base = copy.deepcopy(model)
    ys, ps, energy = [], [], dict.fromkeys(schema.keys, 0.0)
    queue: deque[tuple[float, SparseBatch]] = deque()
    for batch in tail:
        _learn_due(trainer, queue, energy, float(batch.timestamps[0]))
        model.eval()
        ys.append(batch.labels.numpy())
        ps.append(model(batch).detach().numpy())
        queue.append((float(batch.timestamps[-1]) + config.label_delay_s, batch))
    _learn_due(trainer, queue, energy, float("inf"))
    return auc(np.concatenate(ys), np.concatenate(ps)), base, energy


def _split_events(
    batches: list[SparseBatch], cut: int
) -> tuple[list[SparseBatch], list[SparseBatch]]:
    """(the first ``cut`` events, the rest) of ``batches``, splitting the batch ``cut`` falls in."""
    fit: list[SparseBatch] = []
    tail: list[SparseBatch] = []
    seen = 0
    for batch in batches:
        if seen + len(batch) <= cut:
            fit.append(batch)
        elif seen >= cut:
            tail.append(batch)
        else:
            a, b = split_at(batch, cut - seen)
            fit.append(a)
            tail.append(b)
        seen += len(batch)
    return fit, tail


def _learn_due(
    trainer: FullSparseTrainer,
    queue: deque[tuple[float, SparseBatch]],
    energy: dict[str, float],
    upto: float,
) -> None:
    """Train on the queued batches whose labels are due by ``upto`` (the run's label delay)."""
    while queue and queue[0][0] <= upto:
        for name, e in gradient_energy(trainer.step(queue.popleft()[1]).touched).items():
            energy[name] += e


def _with(live: LiveUpdateParams, knob: str, value: float) -> LiveUpdateParams:
    """``live`` with one knob changed; a smaller r_max lowers the initial and minimum rank
    with it (r_min <= initial_rank <= r_max)."""
    if knob == "r_max":
        r_max = int(value)
        return dataclasses.replace(live, r_max=r_max, initial_rank=min(live.initial_rank, r_max),
                                   r_min=min(live.r_min, r_max))  # fmt: skip
    if knob == "tau":
        return dataclasses.replace(live, tau=value)
    if knob == "lr_a":
        return dataclasses.replace(live, lr_a=value)
    return dataclasses.replace(live, lr_b=value)


def _live_tail_auc(
    base: Any,
    tail: list[SparseBatch],
    config: ExperimentConfig,
    params: Any,
    benefit: dict[str, float],
) -> float:
    model = copy.deepcopy(base)
    budgets = table_budgets(model, params, benefit)
    start = float(tail[0].timestamps[0])
    live = LiveUpdate(model, params, budgets, start, -1, seed=config.seed)
    queue: deque[tuple[float, SparseBatch]] = deque()
    ys, ps = [], []
    for batch in itertools.chain(tail):
        now = float(batch.timestamps[0])
        while queue and queue[0][0] <= now:
            ready_at, ready = queue.popleft()
            live.on_ready(ready, ready_at)
        ys.append(batch.labels.numpy())
        ps.append(live.score(batch).numpy())
        queue.append((float(batch.timestamps[-1]) + config.label_delay_s, batch))
    return auc(np.concatenate(ys), np.concatenate(ps))
