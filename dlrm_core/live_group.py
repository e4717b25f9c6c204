"""LiveGroups: the LiveTrainer's fused hot path over all its LiveEmbeddings.

The trainer trains all tables of one (rank, scale) as one LiveGroup, so a step costs a fixed
number of torch ops instead of ~50 small ops per table: for all tables at once one unique over
the batch's keys, then one admission pass through each table's index; per group three calls into the
training kernel (dlrm_core/_training_kernel.c): the forward (each bag's A rows summed, @ B), the
backward (A's gradient per key, B's, the rank controllers' gradient statistics, all in one pass
over the bags) and the step (row-wise Adagrad on A's rows, Adam on B).

Layout: every table gets the region [start_t, start_t + capacity_t) of the row buffers,
capacity_t being the most rows its budget holds at its rank (RankController.capacity), so the
buffers stay within the budgets. Tables are ordered by group, so each group's rows are
contiguous. Ids, last-use times and Adagrad accumulators live in LiveGroups' buffers, A (rank
wide) and the stacked B, b_m, b_v (T, r, D) in the group's. A region holds the table's n_t active
rows first, then free rows. A batch's ids are made distinct for all tables at once in a key space
where table t's ids start at key_offset_t (width N_t + 1).

Each table's LiveEmbedding remains the per-table module the rest of the code uses: its storage is
its region (LiveEmbedding.bind) and its cuckoo index maps its ids to rows of it, so admission
(LiveEmbedding.append) and eviction (LiveEmbedding.evict) update the region and the index in
place in O(ids touched), and memory reports, factor snapshots, export and the rank controllers'
re-factorings act on it directly. A re-factoring replaces the module's tensors and bumps
LiveEmbedding.version; ``LiveGroups.sync`` then copies the table back into its region, or
rebuilds the layout when a table's rank, scale, budget or capacity changed. The math (row-wise
Adagrad, Adam) is the per-table module's, shared through factor_optim.

Shapes: B batch, M tables, T tables in a group, U distinct keys in a batch, r rank, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dlrm_core.batch import SparseBatch
from dlrm_core.factor_optim import ADAGRAD_EPS, ADAM_BETAS, ADAM_EPS
from dlrm_core.kernel import training_kernel
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.rank import RankController, observe_grams

if TYPE_CHECKING:
    from dlrm_core._training_kernel import BagsSpec


@dataclass
class _Member:
    name: str
    live: LiveEmbedding
    controller: RankController
    group: LiveGroup
    slot: int  # its place in the group (row of the stacked B)
    start: int  # first row of its region
    capacity: int
    bits: int  # its index has 2**bits buckets
    key_offset: int
    version: int = -1  # live.version when its tensors were last bound to the region


@dataclass
class _Batch:
    """A batch's ids of all trained tables as distinct keys, with EmbeddingBag indices into
    them; values and keys come group by group."""

    keys: torch.Tensor  # (U,) int64, sorted, distinct
    counts: torch.Tensor  # (U,) occurrences of each key in the batch
    index: torch.Tensor  # (nnz,) position of each value's key in ``keys``
    offsets: torch.Tensor  # (M * B,) bag starts, table-major
    batch_size: int
    value_bounds: list[int]  # (G + 1) first value of each group
    key_bounds: list[int]  # (G + 1) first key of each group
    member_bounds: list[int]  # (M + 1) first key of each table
    # (pos, hit) of ``keys`` in the row buffers, as admit left them (else looked up)
    located: tuple[torch.Tensor, torch.Tensor] | None = None


class LiveGroup:
    """A and B of the tables of one rank (and scale): their forward and optimizer step."""

    def __init__(self, lives: list[LiveEmbedding], features: list[int], row0: int, rows: int):
        self.rank, self.dim, self.scale = lives[0].rank, lives[0].dim, lives[0].scale
        self.size = len(lives)
        self.lives = lives
        self.feature_index = torch.tensor(features, dtype=torch.int64)
        self.row0, self.rows = row0, rows  # its rows in the LiveGroups buffers
        self.a = torch.zeros(rows, self.rank)
        self.b = torch.stack([live.B.detach() for live in lives])
        self.b_m = torch.stack([live.b_m for live in lives])
        self.b_v = torch.stack([live.b_v for live in lives])
        self.controllers: list[RankController] = []  # set by LiveGroups, one per table
        # this step's rows (U_g,), value indices, bags and weights; the (T * B, r) pooled A
        # rows and an alias of b, the leaves autograd fills
        # this step's kernel inputs; from the backward: A's gradient per key (U_g, r), B's
        # (T, r, D), the output gradients' Gram matrices (T, D, D) and whether all are finite
        self._trained: _KernelBags | None = None
        self._row_grad: torch.Tensor | None = None
        self._b_grad: torch.Tensor | None = None
        self._grams: torch.Tensor | None = None
        self._finite: bool | None = None

    def pooled(
        self,
        pos: torch.Tensor,
        hit: torch.Tensor,
        index: torch.Tensor,
        offsets: torch.Tensor,
        batch_size: int,
    ) -> torch.Tensor:
        """(T, B, D) summed deltas of each bag of the group's tables, given the group's rows
        ``pos`` (U_g,) of its keys and ``hit`` (U_g,), each value's key ``index`` (nnz_g,) and
        the bags' starts ``offsets`` (T * B,); with grad enabled, the next ``step`` trains the
        A rows looked up and every B."""
        inputs = _KernelBags(self, pos, hit, index, offsets, batch_size)
        if not torch.is_grad_enabled():
            return self._forward(inputs, keep_sums=False)
        self._trained = inputs
        return _Correction.apply(self.b.detach().requires_grad_(True), self)

    def _forward(self, inputs: _KernelBags, keep_sums: bool) -> torch.Tensor:
        """The kernel's forward: the (T, B, D) deltas, and with ``keep_sums`` each bag's sum
        of A rows (for B's gradient) in ``inputs.sums``."""
        delta = torch.empty(self.size, inputs.batch_size, self.dim)
        training_kernel.lora_forward(
            inputs.spec,
            self.a.data_ptr(),
            self.b.data_ptr(),
            delta.data_ptr(),
            inputs.sums.data_ptr() if keep_sums else 0,
        )
        return delta

    def _backward(self, grad: torch.Tensor) -> torch.Tensor:
        """From the deltas' gradient (T, B, D): A's gradient per key, the rank controllers'
        Gram matrices (T, D, D) and whether it is all finite, kept for ``step``; returns B's
        gradient (T, r, D)."""
        inputs = self._trained
        assert inputs is not None
        if grad.stride(2) != 1:
            grad = grad.contiguous()
        self._row_grad = torch.empty(inputs.keys, self.rank)
        self._b_grad = b_grad = torch.empty(self.size, self.rank, self.dim)
        self._grams = torch.empty(self.size, self.dim, self.dim)
        self._finite = training_kernel.lora_backward(
            inputs.spec,
            self.b.data_ptr(),
            grad.data_ptr(),
            grad.stride(0),
            grad.stride(1),
            inputs.sums.data_ptr(),
            self._row_grad.data_ptr(),
            b_grad.data_ptr(),
            self._grams.data_ptr(),
        )
        return b_grad

    def grads_finite(self) -> bool:
        """This step's gradients are finite (True when there are none)."""
        return self._finite is not False

    def step(self, a_accum: torch.Tensor, lr_a: float, lr_b: float) -> None:
        """LiveEmbedding.step of every table with active rows (``a_accum``: the group's rows
        of the accumulators), then feed the gradient statistics to their rank controllers, in
        one kernel call. Tables without active rows are not in the graph of the per-table
        forward, so they neither step B nor observe gradients here."""
        inputs, grams = self._trained, self._grams
        if inputs is None or grams is None or self._row_grad is None or self._b_grad is None:
            self.drop_grads()
            return
        if (
            a_accum.dtype != torch.float32
            or not a_accum.is_contiguous()
            or len(a_accum) != self.rows
        ):
            raise TypeError(f"a_accum must be {self.rows} contiguous float32 accumulators")
        active = [t for t, live in enumerate(self.lives) if live.num_active]
        for t in active:
            self.lives[t].b_steps += 1
        steps = tuple(
            self.lives[t].b_steps if self.lives[t].num_active else 0 for t in range(self.size)
        )
        training_kernel.lora_step(
            inputs.spec,
            self.a.data_ptr(),
            a_accum.data_ptr(),
            self._row_grad.data_ptr(),
            lr_a,
            ADAGRAD_EPS,
            self.b.data_ptr(),
            self._b_grad.data_ptr(),
            self.b_m.data_ptr(),
            self.b_v.data_ptr(),
            steps,
            lr_b,
            *ADAM_BETAS,
            ADAM_EPS,
        )
        observe_grams(
            [self.controllers[t] for t in active],
            grams if len(active) == self.size else grams[active],
        )
        self.drop_grads()

    def drop_grads(self) -> None:
        self._trained = self._row_grad = self._b_grad = self._grams = self._finite = None


class _KernelBags:
    """A group's step inputs as the training kernel takes them (the tensors kept alive while
    the kernel holds their pointers), and the (T * B, r) sums of A rows per bag."""

    def __init__(
        self,
        group: LiveGroup,
        pos: torch.Tensor,
        hit: torch.Tensor,
        index: torch.Tensor,
        offsets: torch.Tensor,
        batch_size: int,
    ) -> None:
        for buffer in (group.a, group.b, group.b_m, group.b_v):
            if buffer.dtype != torch.float32 or not buffer.is_contiguous():
                raise TypeError("the training kernel takes contiguous float32 factors")
        if offsets.numel() != group.size * batch_size:
            raise ValueError(f"offsets: {offsets.numel()} bags, expected {group.size * batch_size}")
        self.tensors = pos, hit, index, offsets = (
            pos.to(torch.int64).contiguous(),
            hit.to(torch.bool).contiguous(),
            index.to(torch.int64).contiguous(),
            offsets.to(torch.int64).contiguous(),
        )
        self.keys, self.batch_size = pos.numel(), batch_size
        self.sums = torch.empty(offsets.numel(), group.rank)
        self.spec: BagsSpec = (
            pos.data_ptr(),
            hit.data_ptr(),
            index.data_ptr(),
            offsets.data_ptr(),
            index.numel(),
            self.keys,
            group.rows,
            group.size,
            batch_size,
            group.rank,
            group.dim,
            float(group.scale),
        )


class _Correction(torch.autograd.Function):
    """A group's deltas through the training kernel. Its input is a leaf alias of the stacked
    B, whose gradient the backward returns; A's gradient stays with the group (see step)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, group: LiveGroup) -> torch.Tensor:  # type: ignore[override]
        assert group._trained is not None
        ctx.group = group
        return group._forward(group._trained, keep_sums=True)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return ctx.group._backward(grad), None


class LiveGroups:
    """The LiveGroups of a trainer's tables and their shared key / row buffers, kept in step
    with per-table changes. Also the ``delta`` DLRM.forward takes: the base tables plus every
    group's correction."""

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
        self.members: list[_Member] = []  # group by group
        self.features: list[int] = []  # feature position of each member
        self.key_offsets = torch.zeros(0, dtype=torch.int64)  # (M,)
        self.group_members = [0]  # (G + 1) first member of each group
        self.group_key_starts = torch.zeros(0, dtype=torch.int64)  # (G,)
        self.keys = torch.zeros(0, dtype=torch.int64)  # row buffers, see the module docstring
        self.last_used = torch.zeros(0)
        self.a_accum = torch.zeros(0)
        self._signature: tuple | None = None
        self._prepared: tuple[SparseBatch, _Batch] | None = None

    # ---- layout ------------------------------------------------------------------------
    def sync(self) -> None:
        """Rebuild the layout when a table's rank, scale or capacity changed; else copy back
        the tables whose tensors were replaced (rank re-factoring, imports)."""
        signature = tuple(
            (name, live.rank, live.scale, self.controllers[name].capacity())
            for name, live in self.lives.items()
        )
        if signature != self._signature:
            self._rebuild()
            self._signature = signature
            return
        for m in self.members:
            if m.live.version != m.version:
                self._adopt(m)

    def _rebuild(self) -> None:
        by_kind: dict[tuple[int, float], list[str]] = {}
        for name, live in self.lives.items():
            if self.controllers[name].max_rows() > 0:  # else no delta, nothing to train
                by_kind.setdefault((live.rank, live.scale), []).append(name)
        self.groups, self.members = [], []
        key_offset = start = 0
        for _, names in sorted(by_kind.items()):
            names.sort(key=self.feature_names.index)
            plans = [self.controllers[n].capacity() for n in names]
            group = LiveGroup(
                [self.lives[n] for n in names],
                [self.feature_names.index(n) for n in names],
                start,
                sum(rows for rows, _ in plans),
            )
            group.controllers = [self.controllers[n] for n in names]
            for slot, (name, (cap, bits)) in enumerate(zip(names, plans, strict=True)):
                live = self.lives[name]
                self.members.append(
                    _Member(
                        name,
                        live,
                        self.controllers[name],
                        group,
                        slot,
                        start,
                        cap,
                        bits,
                        key_offset,
                    )
                )
                key_offset += live.num_rows + 1  # + 1: the key no id has, see _inputs
                start += cap
            self.groups.append(group)
        self.features = [self.feature_names.index(m.name) for m in self.members]
        self.key_offsets = torch.tensor([m.key_offset for m in self.members], dtype=torch.int64)
        self.group_members = [0]
        for group in self.groups:
            self.group_members.append(self.group_members[-1] + group.size)
        self.group_key_starts = self.key_offsets[self.group_members[:-1]]
        self.keys = torch.zeros(start, dtype=torch.int64)
        self.last_used = torch.zeros(start)
        self.a_accum = torch.zeros(start)
        for m in self.members:
            self._adopt(m)

    def _adopt(self, m: _Member) -> None:
        """Copy a table's current state into its region and make the region its storage."""
        live, s, n = m.live, m.start, m.live.num_active
        if n > m.capacity:  # the rank controller keeps n <= max_rows
            raise RuntimeError(f"table {m.name!r} has {n} active rows, room for {m.capacity}")
        g, t, r = m.group, m.slot, s - m.group.row0
        # clones: the source may overlap the region (a table adopted again in place)
        self.keys[s : s + n] = live.keys.clone()
        self.last_used[s : s + n] = live.last_used.clone()
        self.a_accum[s : s + n] = live.a_accum.clone()
        g.a[r : r + n] = live.A.detach().clone()
        g.b[t] = live.B.detach()
        g.b_m[t] = live.b_m
        g.b_v[t] = live.b_v
        c = m.capacity
        m.live.bind(
            (
                self.keys[s : s + c],
                g.a[r : r + c],
                self.last_used[s : s + c],
                self.a_accum[s : s + c],
            ),
            (g.b[t], g.b_m[t], g.b_v[t]),
            m.bits,
        )
        m.version = m.live.version

    # ---- admission ---------------------------------------------------------------------
    def _inputs(self, batch: SparseBatch) -> _Batch:
        keys, offsets = batch.fused_bags(self.features, self.key_offsets)
        sizes = [batch.values[f].numel() for f in self.features]
        uniq, index, uniq_counts = torch.unique(keys, return_inverse=True, return_counts=True)
        value_bounds = [sum(sizes[:f]) for f in self.group_members]
        member_bounds = torch.searchsorted(uniq, self.key_offsets).tolist() + [uniq.numel()]
        key_bounds = [member_bounds[f] for f in self.group_members]
        return _Batch(
            uniq,
            uniq_counts,
            index,
            offsets,
            batch.batch_size,
            value_bounds,
            key_bounds,
            member_bounds,
        )

    def _locate(self, inputs: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, hit), both (U,): each distinct key's row in the buffers where hit (its
        table's first row elsewhere), through each table's index."""
        pos = torch.zeros(inputs.keys.shape, dtype=torch.int64)
        hit = torch.zeros(inputs.keys.shape, dtype=torch.bool)
        bounds = inputs.member_bounds
        for t, m in enumerate(self.members):
            k0, k1 = bounds[t], bounds[t + 1]
            if k1 > k0:
                rows = m.live.index.rows(inputs.keys[k0:k1] - m.key_offset).to(torch.int64)
                hit[k0:k1] = rows > 0
                pos[k0:k1] = (rows - 1).clamp_(min=0) + m.start
        return pos, hit

    def admit(self, batch: SparseBatch, now: float) -> list[tuple[LiveEmbedding, torch.Tensor]]:
        """RankController.admit for every table: touch the batch's active rows, admit new ids
        that passed the table's gate (most frequent first) into its free room, count the
        refused ones. Returns (table, admitted ids) of the tables that admitted rows. The
        batch's keys and rows are kept for the forward that follows."""
        if not self.members:
            return []
        inputs = self._inputs(batch)
        self._prepared = (batch, inputs)
        out = []
        bounds = inputs.member_bounds
        for t, m in enumerate(self.members):
            live = m.live
            if live.time_origin is None:  # as LiveEmbedding.activate: the first admission
                live.time_origin = float(now)
            k0, k1 = bounds[t], bounds[t + 1]
            if k1 == k0:
                continue
            stamp = float(now) - live.time_origin
            ids = inputs.keys[k0:k1] - m.key_offset
            rows = live.index.rows(ids)
            hit = rows > 0
            live.last_used[rows[hit].to(torch.int64) - 1] = stamp
            new = ids[~hit]
            if new.numel() == 0:
                continue
            counts = inputs.counts[k0:k1][~hit]
            passed = m.controller.passes(new, counts)
            new, counts = new[passed], counts[passed]
            room = m.capacity - live.num_active
            if new.numel() > room:
                m.controller.note_refused(int(new.numel()) - room)
                new = new[torch.argsort(counts, descending=True, stable=True)[:room]]
            if new.numel():
                new = new.sort().values
                live.append(new, stamp)
                out.append((live, new))
        inputs.located = self._locate(inputs)
        return out

    # ---- forward / step ----------------------------------------------------------------
    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch) -> None:
        """Add every group's delta to ``pooled`` (B, F, D) from the base tables, in place."""
        if not self.members:
            return
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is batch:
            inputs = prepared[1]
        else:
            inputs = self._inputs(batch)
        pos, hit = inputs.located or self._locate(inputs)
        n = batch.batch_size
        for g, group in enumerate(self.groups):
            k0, k1 = inputs.key_bounds[g], inputs.key_bounds[g + 1]
            v0, v1 = inputs.value_bounds[g], inputs.value_bounds[g + 1]
            b0, b1 = self.group_members[g] * n, self.group_members[g + 1] * n
            delta = group.pooled(
                (pos[k0:k1] - group.row0).clamp_(0, group.rows - 1),  # misses: any row
                hit[k0:k1],
                inputs.index[v0:v1] - k0,
                inputs.offsets[b0:b1] - v0,
                n,
            )
            # not serving's in-place add per run of features: under autograd its strided views
            # cost a step 7-10% more (trainer_throughput.py, 2026-11-26)
            pooled.index_add_(1, group.feature_index, delta.transpose(0, 1))

    def grads_finite(self) -> bool:
        return all(group.grads_finite() for group in self.groups)

    def step(self, lr_a: float, lr_b: float) -> None:
        for group in self.groups:
            group.step(self.a_accum[group.row0 : group.row0 + group.rows], lr_a, lr_b)

    def drop_grads(self) -> None:
        for group in self.groups:
            group.drop_grads()
