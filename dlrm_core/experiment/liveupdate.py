"""The LiveUpdate strategy (local low-rank training on the node) and its budget allocation.

The node trains LiveEmbedding factors with the LiveTrainer on the labelled events its own
model served. The memory budget (a share of all table bytes) is split across tables by
measured benefit, in the spirit of AdaLoRA's budget allocation: a table's share follows the
gradient energy (sum of squared row-gradient norms) its rows showed while the base model was
trained on the head of the stream, i.e. the first-order loss decrease a correction there can
buy. Tables that cannot use their share are capped and the rest is re-split: a table can use
its rows at r_max, and of those only the ones its traffic touches (the head's distinct rows: a
Criteo feature of three values hashed into 1,024 rows uses three; MovieLens' user table, the
users of the last hour). A table whose share cannot hold B at r_min gets none.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.experiment.cluster import (
    PIECE_BYTES,
    ChangedRows,
    Link,
    Payload,
    SimulatedCluster,
    rows_bytes,
    table_bytes,
)
from dlrm_core.experiment.config import LiveUpdateParams
from dlrm_core.experiment.memory import held_tensor_bytes, model_storages
from dlrm_core.experiment.rank_log import RankLog
from dlrm_core.experiment.strategies import Strategy
from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.model import DLRM
from dlrm_core.rank_policy import RankPolicy, min_budget_bytes
from dlrm_core.rebase import ANCHOR_SHARE, SnapshotAnchor, anchor_caps, delta_rebase, recent_anchor
from dlrm_core.row_budget import (
    FOLD_LOG_MIN,
    FOLD_LOG_SHARE,
    gram_bytes,
    index_bits,
    index_bytes,
    overhead_bytes,
)
from dlrm_core.trainer import FullStepResult, LiveTrainer, TrainerConfig

# the share of a fed node's budget its landing piece may take (reserved from the budget):
# 1/32 leaves the 2M stream's (2.56 MB) 64 KiB pieces as they were; MovieLens' 0.17 MB budget
# lands 5.3 KB pieces instead of 64 KiB (0.77% of its tables, over the 2% with the rest)
PIECE_SHARE = 1 / 32
Anchors = dict[str, SnapshotAnchor]  # a delta rebase's anchors by table (dlrm_core.rebase)


def allocate_budget(
    total_bytes: int,
    benefit: Mapping[str, float],
    caps: Mapping[str, int],
    floor: int,
) -> dict[str, int]:
    """Split ``total_bytes`` across tables in proportion to ``benefit`` (water-filling under
    per-table ``caps``); tables whose share would be below ``floor`` are dropped and their
    share re-split. Tables with zero benefit get nothing."""
    live = {name for name, b in benefit.items() if b > 0 and caps[name] >= floor}
    while live:
        alloc: dict[str, int] = {}
        remaining, open_ = float(total_bytes), set(live)
        while open_:
            weight = sum(benefit[n] for n in open_)
            capped = {n for n in open_ if remaining * benefit[n] / weight >= caps[n]}
            if not capped:
                for n in open_:
                    alloc[n] = int(remaining * benefit[n] / weight)
                break
            for n in capped:
                alloc[n] = caps[n]
                remaining -= caps[n]
            open_ -= capped
        poor = [n for n in live if alloc[n] < floor]
        if not poor:
            return alloc
        live.discard(min(poor, key=lambda n: (benefit[n], n)))
    return {}


def table_caps(
    model: DLRM, r_max: int, head_rows: Mapping[str, int] | None = None
) -> dict[str, int]:
    """Most bytes a table can use: all its rows (of them, the ``head_rows`` its traffic
    touched, when known) active at r_max (D at most), with their index and fold log, and the
    controller's gradient Gram (row_budget's plan)."""
    d, seen = model.config.embedding_dim, head_rows or {}
    caps = {}
    for name, n in zip(model.config.feature_names, model.config.table_sizes, strict=True):
        rows = max(min(n, seen.get(name, n)), 1)
        caps[name] = (
            overhead_bytes(rows, min(r_max, d), d)
            + index_bytes(index_bits(rows))
            + 8 * (FOLD_LOG_MIN + rows // FOLD_LOG_SHARE)
            + gram_bytes(d)
        )
    return caps


class LiveUpdate(Strategy):
    """Local LoRA training of the served model's tables, MLPs frozen, nothing from the cluster
    (the fed variants below add the cluster's payloads)."""

    name = "liveupdate"
    MEASURE_EVERY = 8  # on_ready calls between two walks of the held tensors

    def __init__(
        self,
        model: DLRM,
        params: LiveUpdateParams,
        budgets: Mapping[str, int],
        newest_event_s: float,
        learnt_until_id: int,
        seed: int,
    ) -> None:
        super().__init__(model, newest_event_s, learnt_until_id)
        self.params = params
        self._served = model_storages(model)  # the tables and MLPs any node serves from
        r_max = min(params.r_max, model.config.embedding_dim)  # full rank is D at most
        r_min = min(params.r_min, r_max)
        policy = RankPolicy(tau=params.tau, r_min=r_min, r_max=r_max, max_age=params.prune_age_s)
        config = TrainerConfig(
            tables=tuple(budgets),
            live=LiveEmbeddingConfig(rank=min(max(params.initial_rank, r_min), r_max), seed=seed),
            policy=policy,
            lr_a=params.lr_a,
            lr_b=params.lr_b,
            lr_top=params.lr_top,
            top_layers=params.top_layers,
            label_delay=0.0,  # the harness already held the batch for the label delay
            reuse=params.reuse,
            adapt_every=params.adapt_every,
            publish_every=params.publish_every,
        )
        self.budgets = dict(budgets)
        self.trainer = LiveTrainer(model, config, budgets=self.budgets)
        self.rank_log = RankLog(tuple(budgets))
        self._ready_calls = 0

    def on_ready(self, batch: SparseBatch, now: float) -> None:
        start = time.process_time()
        self.trainer.join.add_served(batch, now)
        self.trainer.train_ready(now)
        self.accounting.node_cpu_seconds += time.process_time() - start
        self.rank_log.note(self.trainer.drain_events())
        self.newest_event_s = max(self.newest_event_s, float(batch.timestamps.max()))
        self.learnt_until_id = max(self.learnt_until_id, int(batch.request_ids.max()))
        peak = self.accounting.peak_memory_overhead_bytes
        self.accounting.set_memory(self.overhead_bytes())
        self._ready_calls += 1
        # every few calls, and whenever the account reaches a new peak (the walk's peak is
        # the claim's figure: a sampled walk missed the tiny run's peak)
        new_peak = self.accounting.peak_memory_overhead_bytes > peak
        if new_peak or self._ready_calls % self.MEASURE_EVERY == 1:
            self.measure()

    def measure(self, staging: object = None) -> int:
        """Walk the tensors this node holds for updating (the factors, their optimizer state,
        the label join's pending batches, the replay window, published versions, what
        ``held`` adds) and record their bytes."""
        held = held_tensor_bytes((self.trainer, staging, self.held()), self._served)
        self.accounting.set_measured(held)
        return held

    def held(self) -> object:
        """What else the node holds for updating (nothing)."""
        return None

    def overhead_bytes(self) -> int:
        """The trainer's whole account (memory_account): its LoRA state, the sketches and the
        pending and replayed batches, as a node's account counts them."""
        return self.trainer.memory_account().total

    def ranks(self) -> dict[str, int]:
        return self.trainer.ranks()

    def active_rows(self) -> dict[str, int]:
        return {name: live.num_active for name, live in self.trainer.lives.items()}


class FedLiveUpdate(LiveUpdate):
    """LiveUpdate fed by the cluster: every ``feed_period_s`` a payload (what ``select``
    names) is snapshot, crosses the link and lands in pieces (Payload.pieces) of at most
    ``piece_bytes`` (reserved from the budget, piece_bytes below), each applied by ``apply``.
    While it lands the node holds one piece and what ``hold`` kept at the snapshot."""

    def __init__(
        self,
        model: DLRM,
        params: LiveUpdateParams,
        budgets: Mapping[str, int],
        newest_event_s: float,
        learnt_until_id: int,
        seed: int,
        start_s: float,
        cluster: SimulatedCluster,
        link: Link,
        feed_period_s: float,
        piece_bytes: int,
    ) -> None:
        super().__init__(model, params, budgets, newest_event_s, learnt_until_id, seed)
        self.cluster, self.link = cluster, link
        self.piece_bytes = piece_bytes
        self.feed_period_s = feed_period_s
        self.next_feed_s = start_s + feed_period_s
        # payloads on the wire: landing time, payload, what the node kept at the snapshot
        self.in_flight: list[tuple[float, Payload, Anchors | None]] = []
        self.rebases = 0

    def held(self) -> object:
        return [kept for _, _, kept in self.in_flight]  # anchors kept until their payload lands

    def select(self, now: float) -> dict[str, torch.Tensor | None]:
        """Rows of each table a payload carries."""
        raise NotImplementedError

    def hold(self, payload: Payload) -> Anchors | None:
        """What the node keeps from a payload's snapshot time until it lands (nothing)."""
        return None

    def apply(self, piece: Payload, held: Anchors | None = None) -> None:
        """Apply one piece of a landed payload."""
        raise NotImplementedError

    def advance(self, now: float) -> None:
        while self.next_feed_s <= now:
            due = self.next_feed_s
            self.next_feed_s += self.feed_period_s
            if self.link.busy(due):
                self.accounting.syncs_skipped_link_busy += 1
                continue
            start = time.process_time()
            payload = self.cluster.snapshot(due, self.select(due))
            self.accounting.cluster_cpu_seconds += time.process_time() - start
            self.in_flight.append((self.link.send(payload, due), payload, self.hold(payload)))
            acc = self.accounting
            acc.bytes_moved += payload.bytes
            acc.bytes_projected += payload.table_bytes * self.link.scale + payload.dense_bytes
            acc.syncs_sent += 1
            acc.transfer_seconds.append(self.in_flight[-1][0] - due)
        while self.in_flight and self.in_flight[0][0] <= now:
            _, payload, held = self.in_flight.pop(0)
            self._land(payload, held)
            self.accounting.syncs_landed += 1
            self.rebases += 1

    def _land(self, payload: Payload, held: Anchors | None) -> None:
        """Apply ``payload`` piece by piece; account and measure the node at its largest piece
        (with the anchors it kept for it)."""
        staged = 0  # the largest piece so far
        for piece in payload.pieces(self.piece_bytes):
            start = time.process_time()
            self.apply(piece, held)
            self.accounting.node_cpu_seconds += time.process_time() - start
            if piece.bytes > staged:
                staged = piece.bytes
                self.accounting.set_memory(self.overhead_bytes() + staged)
                self.measure(staging=(piece, held))


class LiveUpdateDense(FedLiveUpdate):
    """LiveUpdate whose dense part stays fresh: the cluster's MLPs every sync period."""

    name = "liveupdate_dense"

    def select(self, now: float) -> dict[str, torch.Tensor | None]:
        return {}  # no table rows: the payload carries the MLPs only

    def apply(self, piece: Payload, held: Anchors | None = None) -> None:
        piece.write_dense(self.model)


class Hybrid(FedLiveUpdate):
    """LiveUpdate between delta rebases (dlrm_core.rebase): every period the rows the cluster
    changed since the last rebase and its MLPs; those rows' corrections are dropped, every
    other row keeps its own, and what the node learnt about a carried row while the payload
    was on the wire is carried onto the cluster's row by the node's rule: the anchor taken at
    the snapshot holds the most recently used corrected rows within ``anchor_bytes`` (the
    budget's ANCHOR_SHARE, reserved from it by table_budgets), counted in its memory."""

    name = "hybrid"

    def __init__(self, *args: Any, anchor_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.changed = ChangedRows(self.cluster.model.config, self.params.rebase_min_steps)
        self.cluster.listeners.append(self._observe)
        self.anchor_caps = anchor_caps(anchor_bytes, self.budgets)

    def overhead_bytes(self) -> int:
        kept = sum(a.nbytes for _, _, held in self.in_flight for a in (held or {}).values())
        return super().overhead_bytes() + kept

    def _observe(self, result: FullStepResult, now: float) -> None:
        start = time.process_time()
        self.changed.mark(result)
        self.accounting.cluster_cpu_seconds += time.process_time() - start

    def select(self, now: float) -> dict[str, torch.Tensor | None]:
        return self.changed.take()

    def hold(self, payload: Payload) -> Anchors | None:
        """The anchor at the snapshot (dlrm_core.rebase.recent_anchor, before the node knows
        which rows come): at landing the change since of the rows it carries is carried over
        onto the cluster's rows."""
        held = {
            name: recent_anchor(live, self.anchor_caps.get(name, 0), payload.snapshot_s)
            for name, live in self.trainer.lives.items()
        }
        return {name: a for name, a in held.items() if a is not None}

    def apply(self, piece: Payload, held: Anchors | None = None) -> None:
        tables = {
            name: (ids, rows) for name, (ids, rows) in piece.tables.items() if ids is not None
        }
        delta_rebase(self.model, tables, {}, held)
        piece.write_dense(self.model)
        self.newest_event_s = max(self.newest_event_s, piece.newest_event_s)
        self.learnt_until_id = max(self.learnt_until_id, piece.learnt_until_id)


def min_table_budget(params: LiveUpdateParams, dim: int) -> int:
    """The smallest useful budget for a table: B at r_min plus room for 64 active rows."""
    policy = RankPolicy(tau=params.tau, r_min=params.r_min, r_max=params.r_max)
    rank = min(max(params.initial_rank, params.r_min), params.r_max, dim)
    return min_budget_bytes(policy, dim) + overhead_bytes(64, rank, 0)


def budget_bytes(model: DLRM, params: LiveUpdateParams) -> int:
    """``params.budget_pct`` % of the model's table bytes."""
    return int(table_bytes(model) * params.budget_pct / 100.0)


def anchor_bytes(model: DLRM, params: LiveUpdateParams, share: float = ANCHOR_SHARE) -> int:
    """What a hybrid's delta-rebase anchor may hold: ``share`` of the budget."""
    return int(budget_bytes(model, params) * share)


def piece_bytes(model: DLRM, params: LiveUpdateParams) -> int:
    """What a fed node receives and applies at a time: PIECE_SHARE of its budget, at most
    PIECE_BYTES and at least one row, reserved from the budget (as the anchor's share is)."""
    one_row = rows_bytes(1, model.config.embedding_dim)
    return max(min(PIECE_BYTES, int(budget_bytes(model, params) * PIECE_SHARE)), one_row)


def table_budgets(
    model: DLRM,
    params: LiveUpdateParams,
    benefit: Mapping[str, float],
    reserved: int = 0,
    head_rows: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """Each table's bytes of ``params.budget_pct`` % of the model's table bytes less
    ``reserved`` (a hybrid's anchor): in proportion to the measured ``benefit`` with allocation
    "benefit" (equal shares while none was measured), under each table's cap (table_caps, of
    the ``head_rows`` its traffic touched when known; allocate_budget). Raises ValueError when
    no table can hold its factors (min_table_budget)."""
    total = budget_bytes(model, params) - reserved
    measured = benefit if params.allocation == "benefit" and sum(benefit.values()) > 0 else None
    weights = measured or dict.fromkeys(benefit, 1.0)
    floor = min_table_budget(params, model.config.embedding_dim)
    caps = table_caps(model, params.r_max, head_rows)
    budgets = allocate_budget(total, weights, caps, floor)
    if not budgets:
        raise ValueError(
            f"a {params.budget_pct}% budget ({total} bytes) cannot hold a single table's "
            f"factors (each needs >= {floor} bytes); raise budget_pct"
        )
    return budgets


def gradient_energy(touched: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> dict[str, float]:
    """Sum of squared row-gradient norms per table of one full step."""
    return {name: float(norms.double().pow(2).sum()) for name, (_, norms) in touched.items()}
