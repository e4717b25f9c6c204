"""Trainers: the node's LoRA trainer (LiveTrainer); full sparse training of the base model (the
cluster's) is full_trainer.py's, re-exported here.

LiveTrainer is progressive: ``serve`` scores a batch with the current factors before the batch
can ever be learnt from; the batch then waits in a LabelJoin until its label is due. Only the
LiveEmbedding factors A, B train (base tables and MLPs are frozen): A with row-wise Adagrad on
the rows in the batch, B with Adam. One admission pass serves all tables and the tables of one
rank train as one fused LiveGroup (three calls into the training kernel per rank, see
group_layout.py and live_group.py); each table stays a LiveEmbedding whose tensors are views of
shared buffers. Each joined batch may be replayed ``reuse`` more times from a small window. A
batch whose inputs, loss or gradients are not finite is skipped and counted, and the factors
stay unchanged. Every ``room_every`` steps full tables evict LRU rows for the ids they had to
refuse; every ``adapt_every`` steps the rank controllers prune and adapt; every
``publish_every`` steps a new immutable FactorVersion goes to the FactorStore. A batch served
through ``serve`` / ``score_and_keep`` carries the bottom MLP's output it was scored with
(batch.ServedParts), and training reuses it instead of recomputing it: the MLP is frozen.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dlrm_core.batch import ServedParts, SparseBatch
from dlrm_core.factor_store import BasePatch, FactorStore, FactorVersion
from dlrm_core.frozen_head import FrozenHead
from dlrm_core.full_trainer import FullSparseTrainer as FullSparseTrainer  # the cluster's
from dlrm_core.full_trainer import FullStepResult as FullStepResult
from dlrm_core.full_trainer import FullTrainConfig as FullTrainConfig
from dlrm_core.group_layout import LiveGroups
from dlrm_core.kernel import all_finite
from dlrm_core.label_join import LabelJoin
from dlrm_core.live_embedding import LiveEmbedding, LiveEmbeddingConfig, attach_live_embeddings
from dlrm_core.memory_account import MemoryAccount, MemoryReport, TableAccount
from dlrm_core.model import DLRM
from dlrm_core.rank import RankController
from dlrm_core.rank_policy import RankEvent, RankPolicy, min_budget_bytes
from dlrm_core.top_tune import TopLayerTuner

NOTHING_TO_TRAIN = "nothing to train"  # every table too small for its budget, no MLP tuning


@dataclass(frozen=True)
class TrainerConfig:
    tables: tuple[str, ...] | None = None  # tables that get a LiveEmbedding (None: all)
    live: LiveEmbeddingConfig = field(default_factory=LiveEmbeddingConfig)
    policy: RankPolicy = field(default_factory=RankPolicy)
    budget_fraction: float = 0.02  # per-table budget, share of its base bytes
    lr_a: float = 0.05  # row-wise Adagrad on A
    lr_b: float = 1e-3  # Adam on B
    lr_top: float = 0.0  # Adagrad on the top MLP's last top_layers layers (0: frozen; top_tune)
    top_layers: int = 1
    label_delay: float = 0.0  # seconds from serving until a logged label is usable
    label_timeout: float = 600.0  # seconds until a missing label counts as a negative
    max_pending: int = 1_000_000  # served rows waiting for labels
    reuse: int = 1  # extra times a joined batch may be trained on
    replay_window: int = 4  # recent joined batches kept for reuse
    adapt_every: int = 50  # steps between rank adaptation + pruning
    room_every: int = 10  # steps between LRU evictions that make room for refused ids
    publish_every: int = 10  # steps between published factor versions
    # keep the newest published version in the trainer's store (for an in-process reader),
    # its copies taking their share of each table's budget
    keep_published: bool = False
    # on a node, its serving index's key bytes (4, 8): budgets hold its copies too (row_budget)
    node_key_bytes: int = 0
    # False: no LabelJoin (serve / feedback / train_ready) and no FactorStore; the caller
    # joins labels itself, calls train_step and takes publish()'s versions (a node's trainer)
    in_process_join: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.budget_fraction <= 1:
            raise ValueError(f"budget_fraction must be in (0, 1], got {self.budget_fraction}")
        for name, value in (("lr_a", self.lr_a), ("lr_b", self.lr_b)):
            if not (math.isfinite(value) and 0 < value <= 10):
                raise ValueError(f"{name} must be in (0, 10], got {value}")
        if not (math.isfinite(self.lr_top) and 0 <= self.lr_top <= 10):
            raise ValueError(f"lr_top must be in [0, 10], got {self.lr_top}")
        if not 1 <= self.top_layers <= 16:
            raise ValueError(f"top_layers must be in [1, 16], got {self.top_layers}")
        for name in ("reuse", "replay_window"):
            if not 0 <= getattr(self, name) <= 100:
                raise ValueError(f"{name} must be in [0, 100], got {getattr(self, name)}")
        for name in ("adapt_every", "room_every", "publish_every"):
            if not 1 <= getattr(self, name) <= 10**9:
                raise ValueError(f"{name} must be in [1, 1e9], got {getattr(self, name)}")
        if self.keep_published and not self.in_process_join:
            raise ValueError("keep_published needs the in-process FactorStore (in_process_join)")


@dataclass(frozen=True)
class StepResult:
    loss: float  # NaN when skipped before the loss
    samples: int
    skipped: str | None = None  # why the step was skipped, None if it trained
    replay: bool = False


@dataclass
class TrainerStats:
    steps: int = 0  # optimizer steps taken
    samples: int = 0  # samples trained on (replays included)
    replay_steps: int = 0
    skipped: int = 0  # batches skipped for non-finite inputs, loss or gradients
    skip_reasons: dict[str, int] = field(default_factory=dict)
    published: int = 0


class LiveTrainer:
    """The LoRA trainer of one node, over a DLRM whose chosen tables it wraps."""

    def __init__(
        self,
        model: DLRM,
        config: TrainerConfig | None = None,
        budgets: Mapping[str, int] | None = None,
        store: FactorStore | None = None,
    ) -> None:
        self.model = model
        self.config = config = config or TrainerConfig()
        model.requires_grad_(False)
        names = config.tables if config.tables is not None else model.config.feature_names
        self.skipped_tables: list[str] = []  # too small to afford even B at r_min
        budget_of: dict[str, int] = {}
        for name in names:
            table = model.sparse_arch.table(name)
            if not isinstance(table, torch.nn.EmbeddingBag):
                raise ValueError(f"table {name!r} must be a plain EmbeddingBag to be trained")
            weight = table.weight
            nbytes = weight.numel() * weight.element_size()
            given = budgets.get(name) if budgets else None
            budget = int(nbytes * config.budget_fraction) if given is None else int(given)
            if budget < min_budget_bytes(config.policy, weight.shape[1], config.node_key_bytes):
                self.skipped_tables.append(name)
            else:
                budget_of[name] = budget
        self.lives = attach_live_embeddings(model.sparse_arch, list(budget_of), config.live)
        plan_copies = (config.keep_published, config.node_key_bytes)  # the copies budgets hold
        self.controllers = {
            name: RankController(live, name, config.policy, budget_of[name], *plan_copies)
            for name, live in self.lives.items()
        }
        self.groups = LiveGroups(model.config.feature_names, self.lives, self.controllers)
        self.top: TopLayerTuner | None = None
        if config.lr_top > 0:
            self.top = TopLayerTuner(model, config.top_layers, config.lr_top)
        self._head = FrozenHead.of(model)  # used while no top tuner is set (a node sets one)
        self._join: LabelJoin | None = None
        self._store: FactorStore | None = None
        if config.in_process_join:
            self._join = LabelJoin(config.label_delay, config.label_timeout, config.max_pending)
            self._store = store or FactorStore()
        self.stats = TrainerStats()
        self._replay: deque[list] = deque(maxlen=config.replay_window)  # [batch, uses]
        self._now = 0.0  # newest stream time trained on
        self._bottom_params: list[torch.nn.Parameter] = []  # see _bottom_token
        self._bottom_versions: tuple[int, ...] = ()
        self._bottom_tok = object()

    @property
    def join(self) -> LabelJoin:  # the in-process label join (serve, feedback, train_ready)
        if self._join is None:
            raise RuntimeError("this trainer has no label join (TrainerConfig.in_process_join)")
        return self._join

    @property
    def store(self) -> FactorStore:
        """The in-process FactorStore (publish_every, keep_published)."""
        if self._store is None:
            raise RuntimeError("this trainer has no factor store (TrainerConfig.in_process_join)")
        return self._store

    # ---- serving side ------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: SparseBatch) -> torch.Tensor:
        """(B,) click probabilities from the current model and factors."""
        self.groups.sync()
        return torch.sigmoid(self.model(batch, delta=self.groups))

    @torch.no_grad()
    def score_and_keep(self, batch: SparseBatch) -> tuple[torch.Tensor, SparseBatch]:
        """``score``, and the batch carrying the bottom MLP's output it computed: a train_step
        on it (or on its labelled copy) reuses that output instead of recomputing it."""
        self.groups.sync()
        bottom = self.model.bottom(batch)
        pooled = self.model.sparse_arch(batch, base_only=True)
        self.groups.add_to_(pooled, batch)
        probs = torch.sigmoid(self.model.logits(batch, pooled, bottom))
        return probs, batch.with_served(ServedParts(bottom, self._bottom_token()))

    def serve(self, batch: SparseBatch, now: float | None = None) -> torch.Tensor:
        """Score ``batch`` first, then hold it until its labels are due (progressive)."""
        probs, kept = self.score_and_keep(batch)
        self.join.add_served(kept, _now(batch, now))
        return probs

    def _bottom_token(self) -> object:
        """Stands for the bottom MLP's current weights: a new token when a parameter was
        replaced or changed in place (a rebase's load_state_dict bumps its version), so a
        bottom output kept from other weights is recomputed. The parameters are held, so no
        new one can take an old one's identity."""
        params = self.model.dense_arch.layer_parameters()
        versions = tuple(p._version for p in params)
        held = self._bottom_params
        if len(params) != len(held) or any(a is not b for a, b in zip(params, held, strict=False)):
            self._bottom_params, self._bottom_versions = params, (-1,)
        if versions != self._bottom_versions:
            self._bottom_versions, self._bottom_tok = versions, object()
        return self._bottom_tok

    def _kept_bottom(self, batch: SparseBatch) -> torch.Tensor | None:
        """The batch's bottom MLP output kept from serving, if its weights are still ours."""
        served = batch.served
        return served.bottom if served and served.token is self._bottom_token() else None

    def feedback(self, request_ids: torch.Tensor, labels: torch.Tensor, now: float) -> int:
        return self.join.add_feedback(request_ids, labels, now)

    def process(self, batch: SparseBatch, now: float | None = None) -> torch.Tensor:
        """Replay one stream batch: serve it, then train on everything due by now."""
        t = _now(batch, now)
        probs = self.serve(batch, t)
        self.train_ready(t)
        return probs

    # ---- training ----------------------------------------------------------------------
    def train_ready(self, now: float) -> list[StepResult]:
        """Train on the joined batches due by ``now``, each followed by one replay step."""
        results = []
        for batch in self.join.pop_ready(now):
            results.append(self.train_step(batch, now))
            replay = self._pick_replay()
            if self.config.reuse:  # without reuse a kept batch would only hold memory
                self._replay.append([batch, 0])
            if replay is not None:
                replay[1] += 1
                results.append(self.train_step(replay[0], now, replay=True))
        return results

    def _pick_replay(self) -> list | None:
        for item in self._replay:  # oldest first: it leaves the window soonest
            if item[1] < self.config.reuse:
                return item
        return None

    def train_step(self, batch: SparseBatch, now: float, replay: bool = False) -> StepResult:
        """One optimizer step on A and B of every LiveEmbedding."""
        self._now = max(self._now, float(now))
        if not (all_finite(batch.dense) and all_finite(batch.labels)):
            return self._skip("non-finite input", math.nan, batch)
        self.groups.sync()
        pooled = self.model.sparse_arch(batch, base_only=True)  # checks ids before admission
        admitted = self.groups.admit(batch, now)
        value, failed = self._loss_and_grads(batch, pooled)
        if failed == NOTHING_TO_TRAIN:
            return self._skip(failed, value, batch)
        if failed is not None:
            return self._rollback(failed, value, batch, admitted)
        if not self.groups.grads_finite() or (self.top and not self.top.grads_finite()):
            return self._rollback("non-finite gradient", value, batch, admitted)
        self.groups.step(self.config.lr_a, self.config.lr_b)
        if self.top is not None:
            self.top.step()
        self.stats.steps += 1
        self.stats.samples += len(batch)
        self.stats.replay_steps += int(replay)
        if self.stats.steps % self.config.room_every == 0:
            for name, ctl in self.controllers.items():
                ctl.make_room(batch.feature(name)[0], now)
        if self.stats.steps % self.config.adapt_every == 0:
            self.adapt(now)
        due = self.stats.steps % self.config.publish_every == 0
        # early when a fold log outgrew its share of the budget; a caller that publishes the
        # versions itself (no in-process join) checks fold_log_over, or its readers lose folds
        if due or (self.config.in_process_join and self.fold_log_over()):
            self.publish()
        return StepResult(value, len(batch), replay=replay)

    def _loss_and_grads(self, batch: SparseBatch, pooled: torch.Tensor) -> tuple[float, str | None]:
        """The loss with the correction added to ``pooled`` and the gradients left for the step,
        or why not; a frozen head's pass by hand (frozen_head.py), anything else by autograd."""
        bottom = self._kept_bottom(batch)
        if bottom is None:
            bottom = self.model.bottom(batch)
        if self._head is not None and self.top is None and self._head.applies(bottom, pooled):
            self.groups.add_to_(pooled, batch, by_hand=True)
            head = self._head.run(bottom, pooled, batch.labels)
            if head.grad_pooled is None:
                return head.loss, "non-finite loss"
            if not self.groups.training:
                return head.loss, NOTHING_TO_TRAIN
            self.groups.backward(head.grad_pooled)
            return head.loss, None
        self.groups.add_to_(pooled, batch)
        logits = self.model.logits(batch, pooled, bottom)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        value = float(loss.detach())
        if not math.isfinite(value):
            return value, "non-finite loss"
        if not loss.requires_grad:
            return value, NOTHING_TO_TRAIN
        loss.backward()
        return value, None

    def fold_log_over(self) -> bool:
        """A table's fold log holds more than its share of the budget: publish to drain it."""
        return any(ctl.fold_log_over() for ctl in self.controllers.values())

    def _rollback(
        self,
        reason: str,
        loss: float,
        batch: SparseBatch,
        admitted: list[tuple[LiveEmbedding, torch.Tensor]],
    ) -> StepResult:
        """Drop the grads and the rows admitted by this step (their A rows are still zero):
        the factors are as before the step (admit never evicts; make_room runs on success)."""
        self.groups.drop_grads()
        if self.top is not None:
            self.top.drop_grads()
        for live, ids in admitted:
            live.evict(ids, fold=False)
        return self._skip(reason, loss, batch)

    def _skip(self, reason: str, loss: float, batch: SparseBatch) -> StepResult:
        self.stats.skipped += 1
        self.stats.skip_reasons[reason] = self.stats.skip_reasons.get(reason, 0) + 1
        return StepResult(loss, len(batch), skipped=reason)

    def adapt(self, now: float) -> None:
        """Prune idle rows, then adapt each table's rank (a re-factored table goes back into
        its group's region now: none is held twice until the next step)."""
        for ctl in self.controllers.values():
            ctl.prune_idle(now)
            ctl.adapt(now)
        self.groups.sync()

    def set_budget(self, table: str, budget_bytes: int, now: float) -> None:
        ctl = self.controllers[table]
        ctl.set_budget(budget_bytes, now)
        self.groups.sync()  # a smaller rank or region: the layout now (see adapt)
        if ctl.fold_log_over():  # a shrink's evictions: publish them, so the log drains
            self.publish()

    # ---- publishing --------------------------------------------------------------------
    def publish(self) -> FactorVersion:
        """Publish an immutable copy of every table's factors and the base rows folded since
        the previous publish."""
        patches = {name: BasePatch.of(lv, lv.take_folded()) for name, lv in self.lives.items()}
        tables = {name: live.factors() for name, live in self.lives.items()}
        self.stats.published += 1
        if self.config.keep_published:
            return self.store.publish(tables, patches, created_at=self._now)
        return FactorVersion(self.stats.published, self._now, tables, patches)

    # ---- telemetry ---------------------------------------------------------------------
    def memory(self) -> dict[str, MemoryReport]:
        return {name: live.memory() for name, live in self.lives.items()}

    def memory_account(self) -> MemoryAccount:
        """Every byte this trainer holds that grows with active rows, folds or time."""
        tables = {}
        for name, ctl in self.controllers.items():
            report = ctl.live.memory()
            tables[name] = TableAccount(
                factors=report.a_bytes + report.b_bytes,
                optimizer=report.optimizer_bytes,
                slot_map=report.slot_map_bytes,
                sketch=ctl.sketch.nbytes if ctl.sketch is not None else 0,
                gram=ctl.gram_bytes,
                fold_log=report.fold_log_bytes,
                published=self._store.nbytes(name) if self._store else 0,
                budget=ctl.budget_bytes,
                base=report.base_bytes,
            )
        joining = self._join.nbytes() if self._join else 0
        pending = joining + sum(item[0].nbytes for item in self._replay)
        return MemoryAccount(tables, pending, dense=self.top.nbytes if self.top else 0)

    def ranks(self) -> dict[str, int]:
        return {name: live.rank for name, live in self.lives.items()}

    def drain_events(self) -> list[RankEvent]:
        """Rank changes and prunes since the last call, oldest first (none kept: a node's run
        lasts days)."""
        out: list[RankEvent] = []
        for ctl in self.controllers.values():
            out.extend(ctl.events)
            ctl.events.clear()
        return sorted(out, key=lambda e: e.timestamp)


def _now(batch: SparseBatch, now: float | None) -> float:
    if now is not None:
        return float(now)
    return float(batch.timestamps.max()) if len(batch) else 0.0
