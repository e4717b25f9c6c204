"""The replay harness: progressive validation of every strategy on one time-ordered stream.

1. Clock: event i is at ``i / qps`` s (or at its own timestamp minus the first one).
2. The head of the stream (``pretrain_fraction`` of the events) trains the base model with full
   sparse SGD; while it does, each table's gradient energy is measured on the head's last
   fifth (first epoch, so on events the model had not seen), for LiveUpdate's budget split.
3. Every strategy starts from a copy of that base. Each later batch, in order: the clock
   advances to its first event (syncs fall due and land), every strategy scores it with the
   model it serves at that moment, and it is queued; it becomes training data (for the cluster
   and for LiveUpdate) once the clock passes its last event + ``label_delay_s``.
4. AUC / log loss per clock window, staleness, memory and rank are recorded per strategy.
5. With ``config.audit`` the evaluated part is replayed again from the same base, every
   not-yet-due label shown permuted; every score must be identical (audit.py).

The pretrained base is memoised per process (memo.py): runs of one plan that share the stream,
the seed and the head's training settings train it once.

All strategies see the same events in the same order, with the same label delay; given a seed
the run is deterministic (torch seeded, one torch thread by default).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.audit import LeakAudit, compare
from dlrm_core.experiment.cluster import (
    Link,
    SimulatedCluster,
    projection_scale,
    table_bytes,
)
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.fleet import LocalFleet, Router
from dlrm_core.experiment.liveupdate import (
    Hybrid,
    LiveUpdate,
    LiveUpdateDense,
    gradient_energy,
    table_budgets,
)
from dlrm_core.experiment.lowrank import LowRankProbe
from dlrm_core.experiment.memo import Memo
from dlrm_core.experiment.memory import ProcessMemory, process_memory
from dlrm_core.experiment.replay import LabelView, PermutedLabels, StrategyTrace, replay
from dlrm_core.experiment.strategies import (
    DeltaSync,
    FullSync,
    Oracle,
    PrioritizedDelta,
    Stale,
    Strategy,
)
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.schema import StreamSchema
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

TUNE_SHARE = 0.2  # last share of the pretraining head on which the budget split is measured
PRETRAINED: Memo[Pretrained] = Memo(2)  # the bases of the last few (stream, seed, head) keys


@dataclass
class RunResult:
    config: ExperimentConfig
    schema: StreamSchema
    clock: dict[str, Any]
    strategies: dict[str, Strategy]
    traces: dict[str, StrategyTrace]
    cluster: SimulatedCluster
    budgets: dict[str, int]
    benefit: dict[str, float]
    eval_start_s: float
    eval_end_s: float
    eval_events: int
    pretrain_events: int
    audit: LeakAudit | None
    wall_seconds: float
    lowrank: dict[str, Any]
    process: ProcessMemory


@dataclass(frozen=True)
class Pretrained:
    """The base model trained on the head, and what the replay starts from."""

    model: DLRM
    train_config: FullTrainConfig
    benefit: dict[str, float]
    events: int
    newest_event_s: float
    last_id: int


StrategyFactory = Callable[
    [DLRM, SimulatedCluster, ExperimentConfig, float, dict[str, float], float, StreamSchema],
    dict[str, Strategy],
]


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


def split_at(batch: SparseBatch, k: int) -> tuple[SparseBatch, SparseBatch]:
    return batch.select(torch.arange(k)), batch.select(torch.arange(k, len(batch)))


def build_model(schema: StreamSchema, config: ExperimentConfig) -> DLRM:
    torch.manual_seed(config.seed)
    dlrm_config = DLRMConfig.from_schema(
        schema, config.embedding_dim, config.bottom_hidden, config.top_hidden
    )
    return DLRM(dlrm_config)


def run_experiment(
    schema: StreamSchema,
    open_stream: Callable[[], Iterable[SparseBatch]],
    num_events: int,
    config: ExperimentConfig,
    progress: Callable[[int], None] | None = None,
    make: StrategyFactory | None = None,
) -> RunResult:
    """Replay ``open_stream()`` (``num_events`` events, time-ordered) through every strategy
    (``make`` builds them; by default from ``config.strategies``). With ``config.audit`` the
    evaluated part is replayed a second time for the leak audit (audit.py)."""
    wall = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        if num_events < 2:
            raise ValueError(f"the stream needs at least 2 events, got {num_events}")
        pre = _pretrained(schema, open_stream, num_events, config, progress)
        scale = projection_scale(config.link, table_bytes(pre.model))
        first = _first_eval_batch(open_stream, config.qps, pre.events)
        start_s = float(first.timestamps[0])
        factory = make or make_strategies
        cluster = _cluster(pre)
        torch.manual_seed(config.seed)  # both replays start from the same RNG state
        strategies = factory(pre.model, cluster, config, scale, pre.benefit, start_s, schema)
        lowrank = LowRankProbe(cluster, config.sync_period_s, start_s)
        eval_stream = _eval_batches(open_stream, config.qps, pre.events)
        main = replay(eval_stream, strategies, cluster, config, start_s, LabelView(), lowrank,
                      progress)  # fmt: skip
        audit = None
        if config.audit:
            view = PermutedLabels(config.seed)
            cluster2 = _cluster(pre)
            torch.manual_seed(config.seed)
            again = factory(pre.model, cluster2, config, scale, pre.benefit, start_s, schema)
            audited = replay(_eval_batches(open_stream, config.qps, pre.events), again,
                             cluster2, config, start_s, view)  # fmt: skip
            audit = compare(main.traces, audited.traces, view.changed)
        return RunResult(
            config=config,
            schema=schema,
            clock=_clock(config, main.widest, scale),
            strategies=strategies,
            traces=main.traces,
            cluster=cluster,
            budgets=_budgets(strategies),
            benefit=pre.benefit,
            eval_start_s=start_s,
            eval_end_s=main.end_s,
            eval_events=main.eval_events,
            pretrain_events=pre.events,
            audit=audit,
            wall_seconds=time.perf_counter() - wall,
            lowrank=lowrank.summary(),
            process=process_memory(),
        )
    finally:
        torch.set_num_threads(threads)


def _pretrained(
    schema: StreamSchema,
    open_stream: Callable[[], Iterable[SparseBatch]],
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
    open_stream: Callable[[], Iterable[SparseBatch]],
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
    head: list[SparseBatch] = []
    seen, newest, last_id = 0, -math.inf, -1
    for batch in _head_batches(open_stream, config.qps, n_pre):
        result = trainer.step(batch)
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
    return Pretrained(model, full_cfg, benefit, n_pre, newest, last_id)


def _cluster(pre: Pretrained) -> SimulatedCluster:
    return SimulatedCluster(
        copy.deepcopy(pre.model), pre.train_config, pre.newest_event_s, pre.last_id
    )


def _head_batches(
    open_stream: Callable[[], Iterable[SparseBatch]], qps: float | None, n: int
) -> Iterator[SparseBatch]:
    """The first ``n`` events of the replayed stream (the last batch split if needed)."""
    seen = 0
    for batch in replay_batches(open_stream(), qps):
        if seen >= n:
            return
        if seen + len(batch) > n:
            batch = split_at(batch, n - seen)[0]
        seen += len(batch)
        yield batch


def _eval_batches(
    open_stream: Callable[[], Iterable[SparseBatch]], qps: float | None, n: int
) -> Iterator[SparseBatch]:
    """The replayed stream after its first ``n`` events."""
    seen = 0
    for batch in replay_batches(open_stream(), qps):
        if seen + len(batch) <= n:
            seen += len(batch)
            continue
        if seen < n:
            batch = split_at(batch, n - seen)[1]
        seen = n + 1
        yield batch


def _first_eval_batch(
    open_stream: Callable[[], Iterable[SparseBatch]], qps: float | None, n: int
) -> SparseBatch:
    first = next(_eval_batches(open_stream, qps, n), None)
    if first is None:
        raise ValueError("no events left after pretraining; lower pretrain_fraction")
    return first


def _clock(config: ExperimentConfig, widest: SparseBatch, scale: float) -> dict[str, Any]:
    q = config.qps
    return {
        "mode": "qps" if q is not None else "timestamps",
        "qps": q,
        "seconds_per_event": 1.0 / q if q else None,
        "events_per_sync_period": config.sync_period_s * q if q else None,
        "events_per_label_delay": config.label_delay_s * q if q else None,
        "events_per_window": config.window_s * q if q else None,
        "events_per_fine_window": config.fine_window_s * q if q else None,
        "batch_span_s": float(widest.timestamps[-1] - widest.timestamps[0]),
        "batch_size": len(widest),
        "link_scale": scale,
    }


def _budgets(strategies: dict[str, Strategy]) -> dict[str, int]:
    for s in strategies.values():
        node = s.nodes[0] if isinstance(s, LocalFleet) else s
        if isinstance(node, LiveUpdate):
            return dict(node.budgets)
    return {}


LOCAL = {"liveupdate": LiveUpdate, "liveupdate_dense": LiveUpdateDense, "hybrid": Hybrid}


def make_strategies(
    base: DLRM,
    cluster: SimulatedCluster,
    config: ExperimentConfig,
    scale: float,
    benefit: dict[str, float],
    start_s: float,
    schema: StreamSchema,
) -> dict[str, Strategy]:
    """``config.strategies``, each from its own copy of ``base``; local learners as a fleet."""
    out: dict[str, Strategy] = {}
    newest, learnt = cluster.newest_event_s, cluster.learnt_until_id
    period = config.sync_period_s
    for name in config.strategies:
        if name in LOCAL:
            kind = LOCAL[name]
            nodes = [
                _make_liveupdate(kind, copy.deepcopy(base), cluster, Link(config.link, scale),
                                 config, benefit, start_s)
                for _ in range(config.fleet.nodes)
            ]  # fmt: skip
            router = Router(config.fleet, schema, config.seed)
            out[name] = LocalFleet(nodes, router, config.fleet.multicast)
            continue
        model, link = copy.deepcopy(base), Link(config.link, scale)
        if name == "stale":
            out[name] = Stale(model, newest, learnt)
        elif name == "oracle":
            out[name] = Oracle(cluster)
        elif name == "full_sync":
            out[name] = FullSync(model, cluster, link, period, start_s)
        elif name == "delta_sync":
            out[name] = DeltaSync(model, cluster, link, period, start_s)
        else:
            out[name] = PrioritizedDelta(
                model, cluster, link, period, start_s, config.top_p_pct, config.priority
            )
    return out


def _make_liveupdate(
    kind: type[LiveUpdate],
    model: DLRM,
    cluster: SimulatedCluster,
    link: Link,
    config: ExperimentConfig,
    benefit: dict[str, float],
    start_s: float,
) -> LiveUpdate:
    params = config.live
    budgets = table_budgets(model, params, benefit)
    fed = kind is not LiveUpdate or params.rebase_period_s is not None
    feed_period = None
    if kind is LiveUpdateDense:
        feed_period = config.sync_period_s
    elif kind is Hybrid:
        feed_period = params.rebase_period_s or config.sync_period_s
    return kind(
        model,
        params,
        budgets,
        cluster.newest_event_s,
        cluster.learnt_until_id,
        seed=config.seed,
        start_s=start_s,
        cluster=cluster if fed else None,
        link=link if fed else None,
        feed_period_s=feed_period,
    )
