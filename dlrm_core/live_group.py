"""LiveGroup: the LiveTrainer's fused hot path over the LiveEmbeddings of one rank.

The trainer trains all tables of one (rank, scale) as one group, so a step costs a fixed number
of torch ops per group instead of ~50 small ops per table: one unique over the batch's keys
(admission), one searchsorted, one EmbeddingBag over every A row and one bmm with the stacked B
(forward), one row-wise Adagrad and one Adam step (optimizer), one bmm for the rank controllers'
gradient statistics.

Layout: table t owns the region [start_t, start_t + capacity_t) of the group's row buffers
(keys, A, last-use times, Adagrad accumulators), capacity_t being the most rows its budget holds
at this rank (so the buffers stay within the budgets and an admission rewrites one region only).
A region holds the table's n_t active rows sorted by key (key = id + key_offset_t; the ranges
have width N_t + 1) and then padding keys key_offset_t + N_t that no id matches, so the whole key
buffer stays sorted and one searchsorted serves every table. B, b_m and b_v are stacked (T, r, D).

Each member LiveEmbedding remains the per-table module the rest of the code uses: its tensors are
views of its region (LiveEmbedding.bind), so memory reports, factor snapshots, export and the
rank controllers' evictions and re-factorings act on it directly. Those replace the module's
tensors and bump LiveEmbedding.version; ``LiveGroups.sync`` then copies the table back into its
region, or rebuilds the groups when a table's rank, scale or capacity changed. The math (slot
lookup, merge of new rows, row-wise Adagrad, Adam) is the per-table module's, shared through
live_embedding.lookup / merge_sorted and factor_optim.

Shapes: B batch, T tables in a group, C rows of capacity, r rank, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dlrm_core.batch import SparseBatch
from dlrm_core.factor_optim import adam_, rowwise_adagrad_rows_
from dlrm_core.live_embedding import LiveEmbedding, lookup, merge_sorted
from dlrm_core.rank import RankController, observe_grams


@dataclass
class _Member:
    name: str
    live: LiveEmbedding
    controller: RankController
    start: int  # first row of the table's region
    capacity: int
    key_offset: int
    version: int = -1  # live.version when its tensors were last bound to the region


@dataclass
class GroupBatch:
    """A batch's ids of the group's tables as distinct group keys (id + key offset of the
    table), with EmbeddingBag indices into them and offsets."""

    keys: torch.Tensor  # (U,) int64, sorted, distinct
    counts: torch.Tensor  # (U,) occurrences of each key in the batch
    index: torch.Tensor  # (nnz,) position of each value's key in ``keys``
    offsets: torch.Tensor  # (T * B,) bag starts, table-major
    bags: torch.Tensor  # (nnz,) bag of each value
    batch_size: int
    # (pos, hit) of ``keys`` in the group's buffers, as admit left them (else looked up)
    located: tuple[torch.Tensor, torch.Tensor] | None = None


class LiveGroup:
    """The tables of one rank (and scale) of a LiveTrainer, trained as one."""

    def __init__(
        self,
        members: list[tuple[str, LiveEmbedding, RankController]],
        features: list[int],
    ) -> None:
        first = members[0][1]
        self.rank, self.dim, self.scale = first.rank, first.dim, first.scale
        self.features = tuple(features)
        self.feature_index = torch.tensor(features, dtype=torch.int64)
        widths = [live.num_rows + 1 for _, live, _ in members]  # + 1: the padding key
        caps = [ctl.max_rows() for _, _, ctl in members]
        key_offsets = [sum(widths[:t]) for t in range(len(members))]
        starts = [sum(caps[:t]) for t in range(len(members))]
        self.members = [
            _Member(name, live, ctl, start, cap, off)
            for (name, live, ctl), start, cap, off in zip(
                members, starts, caps, key_offsets, strict=True
            )
        ]
        self.key_offsets = torch.tensor(key_offsets, dtype=torch.int64)
        rows = sum(caps)
        self.keys = torch.empty(rows, dtype=torch.int64)
        self.a = torch.zeros(rows, self.rank)
        self.last_used = torch.zeros(rows)
        self.a_accum = torch.zeros(rows)
        self.b = torch.stack([live.B.detach() for _, live, _ in members])
        self.b_m = torch.stack([live.b_m for _, live, _ in members])
        self.b_v = torch.stack([live.b_v for _, live, _ in members])
        for t in range(len(self.members)):
            self._adopt(t)
        # this step's batch, A rows (U,) and value weights; the (T * B, r) pooled A rows and
        # an alias of b, the leaves autograd fills
        self._trained: tuple[GroupBatch, torch.Tensor, torch.Tensor] | None = None
        self._pooled_a: torch.Tensor | None = None
        self._b_leaf: torch.Tensor | None = None
        self._grams: torch.Tensor | None = None  # (T, D, D) of this step's output gradients

    # ---- layout ------------------------------------------------------------------------
    def _adopt(self, t: int) -> None:
        """Copy table t's current tensors into its region and bind them to views of it."""
        m = self.members[t]
        live, s, n = m.live, m.start, m.live.num_active
        if n > m.capacity:  # the rank controller keeps n <= max_rows
            raise RuntimeError(f"table {m.name!r} has {n} active rows, room for {m.capacity}")
        keys = live.keys if live.key_offset == m.key_offset else live.ids + m.key_offset
        self.keys[s : s + n] = keys
        self.keys[s + n : s + m.capacity] = m.key_offset + live.num_rows  # padding
        self.a[s : s + n] = live.A.detach()
        self.last_used[s : s + n] = live.last_used
        self.a_accum[s : s + n] = live.a_accum
        self.b[t] = live.B.detach()
        self.b_m[t] = live.b_m
        self.b_v[t] = live.b_v
        self._bind(t, n)

    def _bind(self, t: int, n: int) -> None:
        m = self.members[t]
        rows = slice(m.start, m.start + n)
        m.live.bind(
            (self.keys[rows], self.a[rows], self.last_used[rows], self.a_accum[rows]),
            (self.b[t], self.b_m[t], self.b_v[t]),
            m.key_offset,
        )
        m.version = m.live.version

    def sync(self) -> None:
        """Re-adopt the tables whose tensors were replaced since they were bound."""
        for t, m in enumerate(self.members):
            if m.live.version != m.version:
                self._adopt(t)

    # ---- admission ---------------------------------------------------------------------
    def inputs(self, batch: SparseBatch) -> GroupBatch:
        values = [batch.values[f] for f in self.features]
        counts = torch.tensor([v.numel() for v in values])
        keys = torch.cat(values) + torch.repeat_interleave(self.key_offsets, counts)
        starts = torch.cumsum(counts, 0) - counts  # where each table's values begin
        offsets = torch.cat([batch.offsets[f] for f in self.features])
        offsets = offsets + torch.repeat_interleave(starts, batch.batch_size)
        uniq, index, uniq_counts = torch.unique(keys, return_inverse=True, return_counts=True)
        lengths = torch.diff(offsets, append=torch.tensor([keys.numel()]))
        bags = torch.repeat_interleave(torch.arange(offsets.numel()), lengths)
        return GroupBatch(uniq, uniq_counts, index, offsets, bags, batch.batch_size)

    def admit(self, inputs: GroupBatch, now: float) -> list[tuple[LiveEmbedding, torch.Tensor]]:
        """RankController.admit for every table at once: touch the batch's active rows, admit
        new ids (most frequent first) into each table's free room, count the refused ones.
        Returns (table, admitted ids) of the tables that admitted rows."""
        for m in self.members:
            if m.live.time_origin is None:
                m.live.time_origin = float(now)
        stamps = [float(now) - float(m.live.time_origin or 0.0) for m in self.members]
        uniq, counts = inputs.keys, inputs.counts
        table = torch.searchsorted(self.key_offsets, uniq, right=True) - 1
        last = self.keys.numel() - 1
        pos = torch.searchsorted(self.keys, uniq)  # a miss: where it would go in its region
        hit = self.keys.index_select(0, pos.clamp(max=last)) == uniq
        self.last_used[pos[hit]] = torch.tensor(stamps).index_select(0, table[hit])
        miss = ~hit
        new, new_counts, new_table = uniq[miss], counts[miss], table[miss]
        if new.numel() == 0:
            inputs.located = (pos.clamp_(max=last), hit)
            return []
        rooms = [m.capacity - m.live.num_active for m in self.members]  # capacity = max_rows
        # per table, most frequent first (ties by id, as LiveEmbedding.activate)
        by_count = torch.argsort(new_counts, descending=True, stable=True)
        order = by_count[torch.argsort(new_table[by_count], stable=True)]
        sorted_table = new_table[order]
        wanted = torch.bincount(new_table, minlength=len(self.members))
        first = torch.cumsum(wanted, 0) - wanted
        place = torch.arange(new.numel()) - first[sorted_table]
        take = place < torch.tensor(rooms)[sorted_table]
        chosen = new[order[take]].sort().values  # sorted keys are sorted by table too
        admitted = torch.bincount(sorted_table[take], minlength=len(self.members))
        out = []
        chunks = torch.split(chosen, admitted.tolist())
        counts_per_table = zip(self.members, admitted.tolist(), wanted.tolist(), strict=True)
        for t, (m, k, w) in enumerate(counts_per_table):
            if w > k:
                m.controller.note_refused(w - k)
            if k:
                self._insert(t, chunks[t], stamps[t])
                out.append((m.live, chunks[t] - m.key_offset))
        # each key moved up by the keys admitted below it in its own region (no second search
        # of the whole buffer)
        below = (
            torch.searchsorted(chosen, uniq) - torch.searchsorted(chosen, self.key_offsets)[table]
        )
        pos = (pos + below).clamp_(max=last)
        inputs.located = (pos, self.keys.index_select(0, pos) == uniq)
        return out

    def _insert(self, t: int, new_keys: torch.Tensor, stamp: float) -> None:
        m = self.members[t]
        s, n, k = m.start, m.live.num_active, new_keys.numel()
        old, grown = slice(s, s + n), slice(s, s + n + k)
        merge_sorted(
            self.keys[old],
            new_keys,
            [(self.a[old], 0.0), (self.last_used[old], stamp), (self.a_accum[old], 0.0)],
            out=(self.keys[grown], [self.a[grown], self.last_used[grown], self.a_accum[grown]]),
        )
        m.live.version += 1  # its tensors change shape: rebind, nothing to copy
        self._bind(t, n + k)

    # ---- forward / step ----------------------------------------------------------------
    def pooled(self, inputs: GroupBatch) -> torch.Tensor:
        """(B, T, D) summed deltas of each bag of the group's tables; with grad enabled, the
        next ``step`` trains the A rows looked up and every B."""
        pos, hit = inputs.located or lookup(self.keys, inputs.keys)
        weights = hit.to(self.a.dtype).index_select(0, inputs.index)  # inactive ids weigh 0
        pooled_a = F.embedding_bag(  # (T * B, r), no autograd: step derives A's gradient
            pos.index_select(0, inputs.index),
            self.a,
            inputs.offsets,
            mode="sum",
            per_sample_weights=weights,
        )
        b = self.b
        if torch.is_grad_enabled():
            self._trained = (inputs, pos, weights)
            pooled_a = self._pooled_a = pooled_a.requires_grad_(True)
            b = self._b_leaf = self.b.detach().requires_grad_(True)
        delta = torch.bmm(pooled_a.view(len(self.members), inputs.batch_size, -1), b)
        if self.scale != 1.0:
            delta = delta * self.scale
        if delta.requires_grad:
            delta.register_hook(self._observe)
        return delta.transpose(0, 1)

    def _observe(self, grad: torch.Tensor) -> None:
        self._grams = torch.bmm(grad.transpose(1, 2), grad)  # (T, D, D)

    def grads_finite(self) -> torch.Tensor:
        """() bool: this step's gradients are finite."""
        ok = torch.ones((), dtype=torch.bool)
        for leaf in (self._pooled_a, self._b_leaf):
            if leaf is not None and leaf.grad is not None:
                ok = ok & torch.isfinite(leaf.grad).all()
        return ok

    def step(self, lr_a: float, lr_b: float) -> None:
        """LiveEmbedding.step of every table with active rows, then feed the gradient
        statistics to their rank controllers. Tables without active rows are not in the
        graph of the per-table forward, so they neither step B nor observe gradients here."""
        pooled_grad = self._pooled_a.grad if self._pooled_a is not None else None
        b_grad = self._b_leaf.grad if self._b_leaf is not None else None
        active = [t for t, m in enumerate(self.members) if m.live.num_active]
        with torch.no_grad():
            if pooled_grad is not None and self._trained is not None:
                # what EmbeddingBag's backward computes: each key's rows summed over its bags
                inputs, pos, weights = self._trained
                per_value = pooled_grad.index_select(0, inputs.bags) * weights.unsqueeze(1)
                a_grad = torch.zeros(pos.numel(), self.rank).index_put_(
                    (inputs.index,), per_value, accumulate=True
                )
                rowwise_adagrad_rows_(self.a, self.a_accum, pos, a_grad, lr_a)
            if b_grad is not None and active:
                for t in active:
                    self.members[t].live.b_steps += 1
                steps = torch.tensor([float(self.members[t].live.b_steps) for t in active])
                if len(active) == len(self.members):
                    adam_(self.b, b_grad, self.b_m, self.b_v, steps.view(-1, 1, 1), lr_b)
                else:
                    idx = torch.tensor(active)
                    b, m, v = (x.index_select(0, idx) for x in (self.b, self.b_m, self.b_v))
                    adam_(b, b_grad.index_select(0, idx), m, v, steps.view(-1, 1, 1), lr_b)
                    for full, part in ((self.b, b), (self.b_m, m), (self.b_v, v)):
                        full.index_copy_(0, idx, part)
        if self._grams is not None:
            grams = self._grams if len(active) == len(self.members) else self._grams[active]
            observe_grams([self.members[t].controller for t in active], grams)
        self.drop_grads()

    def drop_grads(self) -> None:
        self._pooled_a = self._b_leaf = self._grams = self._trained = None


class LiveGroups:
    """The LiveGroups of a trainer's tables, kept in step with per-table changes. Also the
    ``delta`` DLRM.forward takes: the base tables plus every group's correction."""

    def __init__(
        self,
        feature_names: tuple[str, ...],
        lives: Mapping[str, LiveEmbedding],
        controllers: Mapping[str, RankController],
    ) -> None:
        self.feature_names = feature_names
        self.lives = lives
        self.controllers = controllers
        self.groups: list[LiveGroup] = []
        self._signature: tuple | None = None
        self._prepared: tuple[SparseBatch, list[GroupBatch]] | None = None

    def sync(self) -> None:
        """Rebuild the groups when a table's rank, scale or capacity changed; else copy back
        the tables whose tensors were replaced (evictions, rank re-factoring, imports)."""
        signature = tuple(  # max_rows follows from rank and budget
            (name, live.rank, live.scale, self.controllers[name].budget_bytes)
            for name, live in self.lives.items()
        )
        if signature == self._signature:
            for group in self.groups:
                group.sync()
            return
        by_kind: dict[tuple[int, float], list[str]] = {}
        for name, rank, scale, _ in signature:
            if self.controllers[name].max_rows() > 0:  # else no delta, nothing to train
                by_kind.setdefault((rank, scale), []).append(name)
        self.groups = [
            LiveGroup(
                [(n, self.lives[n], self.controllers[n]) for n in names],
                [self.feature_names.index(n) for n in names],
            )
            for _, names in sorted(by_kind.items())
        ]
        self._signature = signature

    def admit(self, batch: SparseBatch, now: float) -> list[tuple[LiveEmbedding, torch.Tensor]]:
        """Admission for every table (see LiveGroup.admit); the batch's group keys are kept
        for the forward that follows."""
        inputs = [group.inputs(batch) for group in self.groups]
        self._prepared = (batch, inputs)
        return [
            x for group, i in zip(self.groups, inputs, strict=True) for x in group.admit(i, now)
        ]

    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add every group's delta to ``pooled`` (B, F, D) from the base tables, in place."""
        prepared = self._prepared
        if prepared is not None and prepared[0] is batch:
            inputs = prepared[1]
        else:
            inputs = [group.inputs(batch) for group in self.groups]
        self._prepared = None
        for group, i in zip(self.groups, inputs, strict=True):
            pooled.index_add_(1, group.feature_index, group.pooled(i))

    def grads_finite(self) -> bool:
        checks = [group.grads_finite() for group in self.groups]
        return bool(torch.stack(checks).all()) if checks else True

    def step(self, lr_a: float, lr_b: float) -> None:
        for group in self.groups:
            group.step(lr_a, lr_b)

    def drop_grads(self) -> None:
        for group in self.groups:
            group.drop_grads()
