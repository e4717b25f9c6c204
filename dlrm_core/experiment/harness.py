"""The replay harness: progressive validation of every strategy on one time-ordered stream.

1. Clock: event i is at ``i / qps`` s (or at its own timestamp minus the first one; stream.py).
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

``run_bundle`` replays several configurations that differ only in their strategies' own
settings (sync period, link, fleet shape, LiveUpdate's parameters: ``PER_STRATEGY``) in one
replay: the cluster trains once for all of them (its trajectory depends only on the stream,
the seed and the label delay), each configuration's strategies are built from the base as in
a run of their own (torch reseeded first) and see the same calls in the same order, so every
number a configuration reports equals that of its own run. The pretrained base and the
re-timed stream are memoised per process (pretrain.py, stream.py).

All strategies see the same events in the same order, with the same label delay; given a seed
the run is deterministic (torch seeded, one torch thread by default).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
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
from dlrm_core.experiment.fleet import LocalFleet, shared_router
from dlrm_core.experiment.liveupdate import (
    FedLiveUpdate,
    Hybrid,
    LiveUpdate,
    LiveUpdateDense,
    anchor_bytes,
    piece_bytes,
    table_budgets,
)
from dlrm_core.experiment.lowrank import LowRankProbe
from dlrm_core.experiment.memory import ProcessMemory, process_memory
from dlrm_core.experiment.pretrain import Pretrained, pretrained
from dlrm_core.experiment.replay import (
    LabelView,
    PermutedLabels,
    Replayed,
    StrategyTrace,
    replay,
)
from dlrm_core.experiment.strategies import (
    DeltaSync,
    FullSync,
    Oracle,
    PrioritizedDelta,
    Stale,
    Strategy,
)
from dlrm_core.experiment.stream import OpenStream, eval_batches, first_eval_batch
from dlrm_core.model import DLRM
from dlrm_core.schema import StreamSchema


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


StrategyFactory = Callable[
    [
        DLRM,
        SimulatedCluster,
        ExperimentConfig,
        float,
        dict[str, float],
        float,
        StreamSchema,
        dict[str, int],
    ],
    dict[str, Strategy],
]


def run_experiment(
    schema: StreamSchema,
    open_stream: OpenStream,
    num_events: int,
    config: ExperimentConfig,
    progress: Callable[[int], None] | None = None,
    make: StrategyFactory | None = None,
) -> RunResult:
    """Replay ``open_stream()`` (``num_events`` events, time-ordered) through every strategy
    (``make`` builds them; by default from ``config.strategies``). With ``config.audit`` the
    evaluated part is replayed a second time for the leak audit (audit.py)."""
    return run_bundle(schema, open_stream, num_events, (config,), progress, make)[0]


# what may differ between the configurations of one replay: their strategies' own settings
PER_STRATEGY = frozenset(
    ("strategies", "sync_period_s", "link", "live", "fleet", "top_p_pct", "priority")
)


def replay_key(config: ExperimentConfig) -> tuple[Any, ...]:
    """What configurations replayed together share (clock, windows, label delay, head, seed)."""
    fields = dataclasses.fields(config)
    return tuple(getattr(config, f.name) for f in fields if f.name not in PER_STRATEGY)


def run_bundle(
    schema: StreamSchema,
    open_stream: OpenStream,
    num_events: int,
    configs: Sequence[ExperimentConfig],
    progress: Callable[[int], None] | None = None,
    make: StrategyFactory | None = None,
) -> list[RunResult]:
    """One replay for ``configs`` (equal ``replay_key``), one cluster for all: a RunResult per
    configuration, each what its own ``run_experiment`` would give (the bundle's wall time
    and process memory are shared)."""
    if not configs or len({replay_key(c) for c in configs}) != 1:
        raise ValueError("a bundle needs 1+ configurations that differ only in PER_STRATEGY")
    wall, config = time.perf_counter(), configs[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(config.torch_threads)
    try:
        if num_events < 2:
            raise ValueError(f"the stream needs at least 2 events, got {num_events}")
        pre = pretrained(schema, open_stream, num_events, config, progress)
        scales = [projection_scale(c.link, table_bytes(pre.model)) for c in configs]
        first = first_eval_batch(open_stream, config.qps, pre.events)
        start_s = float(first.timestamps[0])
        built = _Built(pre, configs, scales, make or make_strategies, start_s, schema)
        probes = {p: LowRankProbe(built.cluster, p, start_s) for p in
                  dict.fromkeys(c.sync_period_s for c in configs)}  # fmt: skip
        main = built.replay(open_stream, LabelView(), list(probes.values()), progress)
        audits: list[LeakAudit | None] = [None] * len(configs)
        if config.audit:
            view = PermutedLabels(config.seed)
            again = _Built(pre, configs, scales, make or make_strategies, start_s, schema)
            audited = again.replay(open_stream, view, [])
            audits = [compare(built.traces(main, i), again.traces(audited, i), view.changed)
                      for i in range(len(configs))]  # fmt: skip
        share = (time.perf_counter() - wall) / len(configs)
        memory = process_memory()
        return [
            RunResult(
                config=c,
                schema=schema,
                clock=_clock(c, main.widest, scale),
                strategies=built.strategies[i],
                traces=built.traces(main, i),
                cluster=built.cluster,
                budgets=_budgets(built.strategies[i]),
                benefit=pre.benefit,
                eval_start_s=start_s,
                eval_end_s=main.end_s,
                eval_events=main.eval_events,
                pretrain_events=pre.events,
                audit=audits[i],
                wall_seconds=share,
                lowrank=probes[c.sync_period_s].summary(),
                process=memory,
            )  # fmt: skip
            for i, (c, scale) in enumerate(zip(configs, scales, strict=True))
        ]
    finally:
        torch.set_num_threads(threads)


class _Built:
    """Every configuration's strategies from the base, around one new cluster."""

    def __init__(
        self,
        pre: Pretrained,
        configs: Sequence[ExperimentConfig],
        scales: Sequence[float],
        factory: StrategyFactory,
        start_s: float,
        schema: StreamSchema,
    ) -> None:
        self.pre, self.configs, self.start_s = pre, configs, start_s
        self.cluster = _cluster(pre)
        self.strategies = []
        for config, scale in zip(configs, scales, strict=True):
            torch.manual_seed(config.seed)  # every replay's strategies from the same RNG state
            made = factory(
                pre.model, self.cluster, config, scale, pre.benefit, start_s, schema, pre.head_rows
            )
            self.strategies.append(made)

    def replay(
        self,
        open_stream: OpenStream,
        view: LabelView,
        probes: list[LowRankProbe],
        progress: Callable[[int], None] | None = None,
    ) -> Replayed:
        flat = {f"{i}/{name}": s for i, mine in enumerate(self.strategies)
                for name, s in mine.items()}  # fmt: skip
        batches = eval_batches(open_stream, self.configs[0].qps, self.pre.events)
        return replay(batches, flat, self.cluster, self.configs[0], self.start_s, view, probes,
                      progress)  # fmt: skip

    def traces(self, replayed: Replayed, i: int) -> dict[str, StrategyTrace]:
        return {name: replayed.traces[f"{i}/{name}"] for name in self.strategies[i]}


def _cluster(pre: Pretrained) -> SimulatedCluster:
    """The training cluster: the base model, trained on from where pretraining stopped (its
    optimizers' state too: a fresh Adagrad takes full-lr steps on every row it meets, and
    the cluster's model fell below the base for its first minutes)."""
    cluster = SimulatedCluster(
        copy.deepcopy(pre.model), pre.train_config, pre.newest_event_s, pre.last_id
    )
    cluster.trainer.load_optimizer_state(pre.optimizer_state)
    return cluster


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
    head_rows: dict[str, int] | None = None,
) -> dict[str, Strategy]:
    """``config.strategies``, each from its own copy of ``base``; local learners as a fleet
    (``benefit``, ``head_rows``: their budget split's evidence, table_budgets)."""
    out: dict[str, Strategy] = {}
    newest, learnt = cluster.newest_event_s, cluster.learnt_until_id
    period = config.sync_period_s
    for name in config.strategies:
        if name in LOCAL:
            kind = LOCAL[name]
            nodes = [
                _make_liveupdate(kind, copy.deepcopy(base), cluster, Link(config.link, scale),
                                 config, benefit, start_s, head_rows)
                for _ in range(config.fleet.nodes)
            ]  # fmt: skip
            router = shared_router(config.fleet, schema, config.seed)
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
    head_rows: dict[str, int] | None = None,
) -> LiveUpdate:
    params = config.live
    # reserved from the budget: a hybrid's anchor, a fed node's landing piece
    anchor = anchor_bytes(model, params) if kind is Hybrid else 0
    piece = piece_bytes(model, params) if issubclass(kind, FedLiveUpdate) else 0
    budgets = table_budgets(model, params, benefit, anchor + piece, head_rows)
    args = (model, params, budgets, cluster.newest_event_s, cluster.learnt_until_id, config.seed)
    if kind is LiveUpdate:
        return LiveUpdate(*args)
    assert issubclass(kind, FedLiveUpdate)
    # the dense variant takes the MLPs every sync period; the hybrid rebases every rebase period
    period = config.sync_period_s
    if kind is Hybrid:
        period = params.rebase_period_s or period
        return Hybrid(*args, start_s=start_s, cluster=cluster, link=link, feed_period_s=period,
                      piece_bytes=piece, anchor_bytes=anchor)  # fmt: skip
    return kind(*args, start_s=start_s, cluster=cluster, link=link, feed_period_s=period,
                piece_bytes=piece)  # fmt: skip
