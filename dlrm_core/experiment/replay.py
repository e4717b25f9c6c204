"""One progressive-validation replay of the evaluated stream through every strategy.

Each batch, in order: the clock advances to its first event (labels due by then are delivered:
the cluster trains on them, local learners too), every strategy scores it with the model it
serves at that moment, and it is queued until its last event + the label delay.

``LabelView`` decides what scoring sees of the labels. The main replay shows them as they are;
the leak audit's replay shows every not-yet-due label permuted (within its batch) and hands the
true labels over only when they are due, so any model that used a label early scores
differently (see audit.py).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import SimulatedCluster
from dlrm_core.experiment.config import ExperimentConfig
from dlrm_core.experiment.fleet import LocalFleet
from dlrm_core.experiment.lowrank import LowRankProbe
from dlrm_core.experiment.strategies import Strategy
from dlrm_core.metrics import WindowedMetrics


class LabelView:
    """What scoring sees of a batch's labels: the labels themselves."""

    changed = 0  # labels that differ from the truth in what scoring saw

    def shown(self, batch: SparseBatch) -> SparseBatch:
        return batch


class PermutedLabels(LabelView):
    """Every label not yet due is shown permuted within its batch (seeded per batch)."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.changed = 0

    def shown(self, batch: SparseBatch) -> SparseBatch:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + int(batch.request_ids[0]))
        labels = batch.labels[torch.randperm(len(batch), generator=gen)]
        self.changed += int((labels != batch.labels).sum())
        return batch.with_labels(labels)


@dataclass
class StrategyTrace:
    """What the replay records about one strategy."""

    metrics: WindowedMetrics
    fine: WindowedMetrics  # the same on shorter windows (curves with enough points)
    labels: list[np.ndarray] = field(default_factory=list)
    scores: list[np.ndarray] = field(default_factory=list)
    staleness_sum: float = 0.0
    staleness_events: int = 0
    serve_cpu_seconds: float = 0.0
    # window index -> memory_overhead_pct (peak), measured_pct (peak), staleness_sum, events,
    # ranks, active_rows
    per_window: dict[int, dict[str, Any]] = field(default_factory=dict)


@dataclass
class Replayed:
    traces: dict[str, StrategyTrace]
    eval_events: int
    end_s: float
    widest: SparseBatch  # a full batch, for the clock mapping


def replay(
    batches: Iterator[SparseBatch],
    strategies: dict[str, Strategy],
    cluster: SimulatedCluster,
    config: ExperimentConfig,
    start_s: float,
    labels: LabelView,
    probes: Sequence[LowRankProbe] = (),
    progress: Callable[[int], None] | None = None,
) -> Replayed:
    traces = {
        name: StrategyTrace(
            WindowedMetrics(config.window_s, origin=start_s),
            WindowedMetrics(config.fine_window_s, origin=start_s),
        )
        for name in strategies
    }
    queue: deque[tuple[float, SparseBatch]] = deque()
    eval_events, end_s, widest = 0, start_s, None

    def deliver(upto: float) -> None:
        while queue and queue[0][0] <= upto:
            ready_at, ready = queue.popleft()
            for s in strategies.values():
                s.advance(ready_at)
            for probe in probes:
                probe.advance(ready_at)
            cluster.train(ready, ready_at)
            for s in strategies.values():
                s.on_ready(ready, ready_at)

    for batch in batches:
        now = float(batch.timestamps[0])
        deliver(now)
        window = int(math.floor((now - start_s) / config.window_s))
        y, shown = batch.labels.numpy(), labels.shown(batch)
        for name, s in strategies.items():
            s.advance(now)
            t0 = time.process_time()
            probs = s.score(shown).numpy()
            trace = traces[name]
            trace.serve_cpu_seconds += time.process_time() - t0
            trace.metrics.add(y, probs, batch.timestamps.numpy())
            trace.fine.add(y, probs, batch.timestamps.numpy())
            trace.labels.append(y)
            trace.scores.append(probs.astype(np.float64))
            stale = max(now - s.newest_event_s, 0.0) if math.isfinite(s.newest_event_s) else 0.0
            trace.staleness_sum += stale * len(batch)
            trace.staleness_events += len(batch)
            _record_window(trace, window, s, stale, len(batch))
        end_s = float(batch.timestamps[-1])
        queue.append((end_s + config.label_delay_s, batch))
        eval_events += len(batch)
        widest = batch if widest is None or len(batch) > len(widest) else widest
        if progress:
            progress(len(batch))
    if widest is None:
        raise ValueError("no events left after pretraining; lower pretrain_fraction")
    return Replayed(traces, eval_events, end_s, widest)


def _record_window(
    trace: StrategyTrace, window: int, s: Strategy, staleness: float, n: int
) -> None:
    w = trace.per_window.setdefault(
        window,
        {"memory_overhead_pct": 0.0, "measured_memory_pct": 0.0, "staleness_sum": 0.0,
         "events": 0},
    )  # fmt: skip
    acc = s.accounting
    nodes = len(s.nodes) if isinstance(s, LocalFleet) else 1
    peak_pct = 100.0 * acc.take_window_peak() / nodes / acc.table_bytes  # per node
    w["memory_overhead_pct"] = max(w["memory_overhead_pct"], peak_pct)
    measured = 100.0 * acc.measured_bytes / nodes / acc.table_bytes  # per node
    w["measured_memory_pct"] = max(w["measured_memory_pct"], measured)
    w["staleness_sum"] += staleness * n
    w["events"] += n
    w["ranks"] = s.ranks()
    active = getattr(s.nodes[0] if isinstance(s, LocalFleet) else s, "active_rows", None)
    if active is not None:
        w["active_rows"] = active()
