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

All strategies see the same events in the same order, with the same label delay; given a seed
the run is deterministic (torch seeded, one torch thread by default).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import (
    Link,
    SimulatedCluster,
    projection_scale,
    table_bytes,
)
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.liveupdate import (
    LiveUpdate,
    allocate_budget,
    gradient_energy,
    min_table_budget,
    table_caps,
)
from dlrm_core.experiment.strategies import (
    DeltaSync,
    FullSync,
    PrioritizedDelta,
    Stale,
    Strategy,
)
from dlrm_core.metrics import WindowedMetrics, auc, log_loss
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.schema import StreamSchema
from dlrm_core.trainer import FullSparseTrainer, FullTrainConfig

TUNE_SHARE = 0.2  # last share of the pretraining head on which the budget split is measured


class ProgressiveViolation(AssertionError):
    """A strategy scored an event with a model that had already learnt from it."""


@dataclass
class Audit:
    """Checks that no scored event is known to the model scoring it (config.audit)."""

    checks: int = 0
    violations: int = 0

    def check(self, strategy: Strategy, batch: SparseBatch) -> None:
        self.checks += 1
        if int(batch.request_ids.min()) <= strategy.learnt_until_id:
            self.violations += 1
            raise ProgressiveViolation(
                f"{strategy.name} scored request {int(batch.request_ids.min())} with a model "
                f"that learnt up to request {strategy.learnt_until_id}"
            )


@dataclass
class StrategyTrace:
    """What the harness records about one strategy while replaying."""

    metrics: WindowedMetrics
    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    staleness_sum: float = 0.0
    staleness_events: int = 0
    serve_cpu_seconds: float = 0.0
    # window index -> memory_overhead_pct (peak), staleness_sum, events, ranks, active_rows
    per_window: dict[int, dict[str, Any]] = field(default_factory=dict)


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
    audit: Audit
    wall_seconds: float
    lowrank: dict[str, Any]


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
) -> RunResult:
    """Replay ``open_stream()`` (``num_events`` events, time-ordered) through every strategy."""
    wall = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        return _run(schema, open_stream, num_events, config, progress, wall)
    finally:
        torch.set_num_threads(threads)


def _run(
    schema: StreamSchema,
    open_stream: Callable[[], Iterable[SparseBatch]],
    num_events: int,
    config: ExperimentConfig,
    progress: Callable[[int], None] | None,
    wall: float,
) -> RunResult:
    if num_events < 2:
        raise ValueError(f"the stream needs at least 2 events, got {num_events}")
    n_pre = int(num_events * config.pretrain_fraction)
    tune_from = n_pre - max(1, int(n_pre * TUNE_SHARE))
    model = build_model(schema, config)
    full_cfg = FullTrainConfig(
        optimizer=config.optimizer, lr_dense=config.lr_dense, lr_sparse=config.lr_sparse
    )
    pretrainer = FullSparseTrainer(model, full_cfg)
    benefit = {name: 0.0 for name in schema.keys}
    stream = replay_batches(open_stream(), config.qps)
    head: list[SparseBatch] = []
    pending: SparseBatch | None = None
    seen = 0
    newest_pre, last_pre_id = -math.inf, -1
    for batch in stream:
        if seen >= n_pre:
            pending = batch
            break
        if seen + len(batch) > n_pre:
            batch, pending = split_at(batch, n_pre - seen)
        result = pretrainer.step(batch)
        if seen >= tune_from:
            for name, energy in gradient_energy(result.touched).items():
                benefit[name] += energy
        if config.pretrain_epochs > 1:
            head.append(batch)
        seen += len(batch)
        newest_pre = float(batch.timestamps.max())
        last_pre_id = int(batch.request_ids.max())
        if progress:
            progress(len(batch))
        if pending is not None:
            break
    for _ in range(config.pretrain_epochs - 1):
        for batch in head:
            pretrainer.step(batch)
    del head
    if n_pre == 0:
        newest_pre = -math.inf

    scale = projection_scale(config.link, table_bytes(model))
    cluster = SimulatedCluster(copy.deepcopy(model), full_cfg, newest_pre, last_pre_id)
    first = pending if pending is not None else next(stream, None)
    if first is None:
        raise ValueError("no events left after pretraining; lower pretrain_fraction")
    start_s = float(first.timestamps[0])
    strategies = _make_strategies(model, cluster, config, scale, benefit, start_s)
    traces = {
        name: StrategyTrace(WindowedMetrics(config.window_s, origin=start_s)) for name in strategies
    }
    audit = Audit()
    queue: deque[tuple[float, SparseBatch]] = deque()
    lowrank = LowRankProbe(cluster, config.sync_period_s, start_s)
    eval_events, end_s = 0, start_s
    widest = first  # a full batch, for the clock mapping (the first may be a split remainder)

    def deliver(upto: float) -> None:
        while queue and queue[0][0] <= upto:
            ready_at, ready = queue.popleft()
            for s in strategies.values():
                s.advance(ready_at)
            lowrank.advance(ready_at)
            cluster.train(ready, ready_at)
            for s in strategies.values():
                s.on_ready(ready, ready_at)

    for batch in _chain(first, stream):
        now = float(batch.timestamps[0])
        deliver(now)
        window = int(math.floor((now - start_s) / config.window_s))
        y = batch.labels.numpy()
        for name, s in strategies.items():
            s.advance(now)
            if config.audit:
                audit.check(s, batch)
            t0 = time.process_time()
            probs = s.score(batch).numpy()
            trace = traces[name]
            trace.serve_cpu_seconds += time.process_time() - t0
            trace.metrics.add(y, probs, batch.timestamps.numpy())
            trace.labels.append(y)
            trace.scores.append(probs.astype(np.float64))
            stale = max(now - s.newest_event_s, 0.0) if math.isfinite(s.newest_event_s) else 0.0
            trace.staleness_sum += stale * len(batch)
            trace.staleness_events += len(batch)
            _record_window(trace, window, s, stale, len(batch))
        end_s = float(batch.timestamps[-1])
        queue.append((end_s + config.label_delay_s, batch))
        eval_events += len(batch)
        widest = batch if len(batch) > len(widest) else widest
        if progress:
            progress(len(batch))
    clock = {
        "mode": "qps" if config.qps is not None else "timestamps",
        "qps": config.qps,
        "seconds_per_event": 1.0 / config.qps if config.qps else None,
        "events_per_sync_period": config.sync_period_s * config.qps if config.qps else None,
        "events_per_label_delay": config.label_delay_s * config.qps if config.qps else None,
        "events_per_window": config.window_s * config.qps if config.qps else None,
        "batch_span_s": float(widest.timestamps[-1] - widest.timestamps[0]),
        "batch_size": len(widest),
        "link_scale": scale,
    }
    return RunResult(
        config=config,
        schema=schema,
        clock=clock,
        strategies=strategies,
        traces=traces,
        cluster=cluster,
        budgets=getattr(strategies.get("liveupdate"), "budgets", {}),
        benefit=benefit,
        eval_start_s=start_s,
        eval_end_s=end_s,
        eval_events=eval_events,
        pretrain_events=n_pre,
        audit=audit,
        wall_seconds=time.perf_counter() - wall,
        lowrank=lowrank.summary(),
    )


def _chain(first: SparseBatch, rest: Iterator[SparseBatch]) -> Iterator[SparseBatch]:
    yield first
    yield from rest


def _record_window(
    trace: StrategyTrace, window: int, s: Strategy, staleness: float, n: int
) -> None:
    w = trace.per_window.setdefault(
        window, {"memory_overhead_pct": 0.0, "staleness_sum": 0.0, "events": 0}
    )
    acc = s.accounting
    peak_pct = 100.0 * acc.take_window_peak() / acc.table_bytes
    w["memory_overhead_pct"] = max(w["memory_overhead_pct"], peak_pct)
    w["staleness_sum"] += staleness * n
    w["events"] += n
    w["ranks"] = s.ranks()
    if isinstance(s, LiveUpdate):
        w["active_rows"] = s.active_rows()


def _make_strategies(
    base: DLRM,
    cluster: SimulatedCluster,
    config: ExperimentConfig,
    scale: float,
    benefit: dict[str, float],
    start_s: float,
) -> dict[str, Strategy]:
    out: dict[str, Strategy] = {}
    newest, learnt = cluster.newest_event_s, cluster.learnt_until_id
    for name in config.strategies:
        model = copy.deepcopy(base)
        link = Link(config.link, scale)
        period = config.sync_period_s
        if name == "stale":
            out[name] = Stale(model, newest, learnt)
        elif name == "full_sync":
            out[name] = FullSync(model, cluster, link, period, start_s)
        elif name == "delta_sync":
            out[name] = DeltaSync(model, cluster, link, period, start_s)
        elif name == "prioritized_delta":
            out[name] = PrioritizedDelta(
                model, cluster, link, period, start_s, config.top_p_pct, config.priority
            )
        else:
            out[name] = _make_liveupdate(model, cluster, link, config, benefit, start_s)
    return out


def _make_liveupdate(
    model: DLRM,
    cluster: SimulatedCluster,
    link: Link,
    config: ExperimentConfig,
    benefit: dict[str, float],
    start_s: float,
) -> LiveUpdate:
    params = config.live
    total = int(table_bytes(model) * params.budget_pct / 100.0)
    measured = benefit if params.allocation == "benefit" and sum(benefit.values()) > 0 else None
    weights = measured or dict.fromkeys(benefit, 1.0)
    floor = min_table_budget(params, model.config.embedding_dim)
    budgets = allocate_budget(total, weights, table_caps(model, params.r_max), floor)
    if not budgets:
        raise ValueError(
            f"a {params.budget_pct}% budget ({total} bytes) cannot hold a single table's "
            f"factors (each needs >= {floor} bytes); raise budget_pct"
        )
    return LiveUpdate(
        model,
        params,
        budgets,
        cluster.newest_event_s,
        cluster.learnt_until_id,
        seed=config.seed,
        start_s=start_s,
        cluster=cluster if params.rebase_period_s is not None else None,
        link=link if params.rebase_period_s is not None else None,
    )


class LowRankProbe:
    """Spectrum of the cluster's applied update (its optimizer's, see summary) over each sync
    period: the rank needed for 95% / 99% of its energy, per table."""

    def __init__(self, cluster: SimulatedCluster, period_s: float, start_s: float) -> None:
        self.cluster = cluster
        self.period_s = period_s
        self.next_s = start_s + period_s
        self.snap = self._weights()
        self.ranks: dict[str, list[tuple[int, int, int]]] = {}  # name -> (rows, r95, r99)

    def _weights(self) -> dict[str, torch.Tensor]:
        sa = self.cluster.model.sparse_arch
        return {
            name: sa.table(name).weight.detach().clone()  # type: ignore[operator]
            for name in sa.feature_names
        }

    def advance(self, now: float) -> None:
        if now < self.next_s:
            return
        self.next_s += self.period_s * math.ceil((now - self.next_s) / self.period_s + 1e-12)
        current = self._weights()
        for name, weight in current.items():
            delta = weight - self.snap[name]
            rows = torch.nonzero(delta.abs().sum(1)).squeeze(1)
            if rows.numel() < 2:
                continue
            s = torch.linalg.svdvals(delta[rows].double())
            share = torch.cumsum(s.pow(2), 0) / s.pow(2).sum()
            r95 = int(torch.searchsorted(share, torch.tensor([0.95 - 1e-9]).double())) + 1
            r99 = int(torch.searchsorted(share, torch.tensor([0.99 - 1e-9]).double())) + 1
            self.ranks.setdefault(name, []).append((int(rows.numel()), r95, r99))
        self.snap = current

    def summary(self) -> dict[str, Any]:
        tables = {}
        for name, items in self.ranks.items():
            arr = np.array(items, dtype=np.float64)
            tables[name] = {
                "periods": len(items),
                "mean_changed_rows": float(arr[:, 0].mean()),
                "mean_rank_95": float(arr[:, 1].mean()),
                "mean_rank_99": float(arr[:, 2].mean()),
            }
        return {
            "quantity": "applied update of the cluster's embedding rows over one sync period",
            "optimizer": self.cluster.trainer.config.optimizer,
            "tables": tables,
        }


def pooled_metrics(trace: StrategyTrace) -> tuple[float, float]:
    """(AUC, log loss) over every scored event."""
    y = np.concatenate(trace.labels)
    s = np.concatenate(trace.scores)
    return auc(y, s), log_loss(y, s)
