"""LiveGroups: the LiveTrainer's fused hot path over all its LiveEmbeddings: the layout of
their rows, the batch's admission, and each LiveGroup's (live_group.py) delta added to the
forward.

For all tables at once a step makes one unique over the batch's keys, then one call of the
admission kernel (dlrm_core/_admission_kernel.c: each table's index lookups, last-use stamps,
second-sighting gate and appends, and every key's row for the forward); then one call of the
training kernel adds every group's correction (live_group.py).

Layout: every table gets the region [start_t, start_t + capacity_t) of the row buffers,
capacity_t being the most rows its budget holds at its rank (RankController.capacity), so the
buffers stay within the budgets. Tables are ordered by group, so each group's rows are
contiguous. Ids, last-use times and Adagrad accumulators live in LiveGroups' buffers, A (rank
wide) and the stacked B, b_m, b_v (T, r, D) in the group's. A region holds the table's n_t active
rows first, then free rows. A batch's ids are made distinct for all tables at once in a key space
where table t's ids start at key_offset_t (width N_t + 1).

Each table's LiveEmbedding remains the per-table module the rest of the code uses: its storage is
its region (LiveEmbedding.bind) and its cuckoo index maps its ids to rows of it, so admission (the
kernel's appends, then LiveEmbedding.extend) and eviction (LiveEmbedding.evict) update the region
and the index in place in O(ids touched), and memory reports, factor snapshots, export and the rank
controllers' re-factorings act on it directly. A re-factoring replaces the module's tensors and
bumps LiveEmbedding.version; ``LiveGroups.sync`` then copies the table back into its region, or
rebuilds the layout when a table's rank, scale, budget or capacity changed.

Shapes: B batch, M tables, T tables in a group, U distinct keys in a batch, r rank, D dim.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from dlrm_core import key_sort
from dlrm_core.admission import SightingSketch
from dlrm_core.batch import SparseBatch
from dlrm_core.kernel import admission_kernel
from dlrm_core.live_embedding import LiveEmbedding
from dlrm_core.live_group import Correction, LiveGroup
from dlrm_core.rank import RankController

if TYPE_CHECKING:
    from dlrm_core._admission_kernel import RegionSpec, TableSpec


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
    region: RegionSpec | None = None  # the region as the admission kernel takes it


@dataclass
class _Batch:
    """A batch's ids of all trained tables as distinct keys, with EmbeddingBag indices into
    them; values and keys come group by group."""

    keys: torch.Tensor  # (U,) int64, sorted, distinct
    counts: torch.Tensor  # (U,) occurrences of each key in the batch
    index: torch.Tensor  # (nnz,) position of each value's key in ``keys``
    offsets: torch.Tensor  # (M * B,) bag starts, table-major
    batch_size: int
    key_bounds: list[int]  # (G + 1) first key of each group
    member_bounds: torch.Tensor  # (M + 1) int64 first key of each table
    # (pos, hit) of ``keys`` in the row buffers, as admit left them (else looked up)
    located: tuple[torch.Tensor, torch.Tensor] | None = None


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
        self.feature_index = torch.zeros(0, dtype=torch.int64)  # the same, (M,)
        self.member_lives: list[LiveEmbedding] = []
        self.member_controllers: list[RankController] = []
        self._key_offsets: list[int] = []  # (M,) each member's first key
        self._rows: list[int] = []  # (M,) its base rows
        self.group_members = [0]  # (G + 1) first member of each group
        self.keys = torch.zeros(0, dtype=torch.int64)  # row buffers, see the module docstring
        self.last_used = torch.zeros(0)
        self.a_accum = torch.zeros(0)
        self._signature: tuple | None = None
        self._changes: tuple | None = None  # what sync last saw (see there)
        self._prepared: tuple[SparseBatch, _Batch] | None = None
        self._correction: Correction | None = None  # the step's, under grad
        # a leaf that requires grad: the correction's autograd input, so the loss requires grad
        self._anchor = torch.zeros(0, requires_grad=True)

    # ---- layout ------------------------------------------------------------------------
    def sync(self) -> None:
        """Rebuild the layout when a table's rank, scale or capacity changed; else copy back
        the tables whose tensors were replaced (rank re-factoring, imports). Runs before every
        step: a table's rank and scale change only with its tensors (LiveEmbedding.version),
        its capacity only with them or its budget and sketch (whose bytes its width sets), so
        nothing else is looked at while those stay as they were."""
        changes = tuple(
            (live.version, ctl.budget_bytes, ctl.sketch.width_bits if ctl.sketch else 0)
            for live, ctl in zip(self.lives.values(), self.controllers.values(), strict=True)
        )
        if changes == self._changes:
            return
        self._changes = changes
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
                len(self.members),
                start,
                sum(rows for rows, _ in plans),
            )
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
                key_offset += live.num_rows + 1  # the tables' key ranges, one key apart
                start += cap
            self.groups.append(group)
        self.features = [self.feature_names.index(m.name) for m in self.members]
        self.feature_index = torch.tensor(self.features, dtype=torch.int64)
        self.member_lives = [m.live for m in self.members]
        self.member_controllers = [m.controller for m in self.members]
        self._key_offsets = [m.key_offset for m in self.members]
        self._rows = [m.live.num_rows for m in self.members]
        self.group_members = [0]
        for group in self.groups:
            self.group_members.append(self.group_members[-1] + group.size)
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
        m.region = (
            self.keys[s:].data_ptr(),
            g.a[r:].data_ptr(),
            self.last_used[s:].data_ptr(),
            self.a_accum[s:].data_ptr(),
            g.rank,
            s,
            c,
            m.key_offset,
            live.num_rows,
        )

    # ---- admission ---------------------------------------------------------------------
    def _inputs(self, batch: SparseBatch) -> _Batch:
        uniq, index, counts, offsets, member_bounds = key_sort.batch_keys(
            [batch.values[f] for f in self.features],
            [batch.offsets[f] for f in self.features],
            self._key_offsets,
            self._rows,
        )
        first_keys = member_bounds.tolist()
        key_bounds = [first_keys[f] for f in self.group_members]
        return _Batch(uniq, counts, index, offsets, batch.batch_size, key_bounds, member_bounds)

    def _locate(self, inputs: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, hit), both (U,): each distinct key's row in the buffers where hit (its
        table's first row elsewhere), through each table's index."""
        tables = tuple(self._table_spec(m, None, 0.0) for m in self.members)
        return self._run_kernel(inputs, tables, lookups_only=True)[:2]

    def _table_spec(self, m: _Member, sketch: SightingSketch | None, stamp: float) -> TableSpec:
        if m.region is None or m.live.version != m.version:
            raise RuntimeError(f"table {m.name!r} changed since the layout: sync() first")
        gate = sketch.kernel_spec if sketch is not None else None
        admit_after = m.controller.policy.admit_after
        return (m.region, m.live.index.kernel_spec, gate, admit_after, m.live.num_active, stamp)

    def _run_kernel(
        self, inputs: _Batch, tables: tuple[TableSpec, ...], lookups_only: bool
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """The admission kernel over the batch's keys: (pos, hit) and each table's (admitted,
        refused, indexed)."""
        keys, counts, bounds = inputs.keys, inputs.counts, inputs.member_bounds
        pos = torch.empty(keys.shape, dtype=torch.int64)
        hit = torch.empty(keys.shape, dtype=torch.bool)
        status = torch.empty(len(tables), 3, dtype=torch.int64)
        admission_kernel.admit(
            tables,
            keys.data_ptr(),
            counts.data_ptr(),
            bounds.data_ptr(),
            keys.numel(),
            pos.data_ptr(),
            hit.data_ptr(),
            status.data_ptr(),
            lookups_only,
        )
        return pos, hit, status.tolist()

    def admit(self, batch: SparseBatch, now: float) -> list[tuple[LiveEmbedding, torch.Tensor]]:
        """RankController.admit for every table, in one admission kernel call: touch the
        batch's active rows, admit new ids that passed the table's gate (most frequent first)
        into its free room, count the refused ones. Returns (table, admitted ids) of the tables
        that admitted rows. The batch's keys and rows are kept for the forward that follows."""
        if not self.members:
            return []
        inputs = self._inputs(batch)
        self._prepared = (batch, inputs)
        tables = []
        for m in self.members:
            live = m.live
            if live.time_origin is None:  # as LiveEmbedding.activate: the first admission
                live.time_origin = float(now)
            tables.append(self._table_spec(m, m.controller.sketch, float(now) - live.time_origin))
        pos, hit, status = self._run_kernel(inputs, tuple(tables), lookups_only=False)
        inputs.located = pos, hit
        out = []
        for m, (admitted, refused, indexed) in zip(self.members, status, strict=True):
            if refused:
                m.controller.note_refused(refused)
            if admitted:
                n = m.live.num_active
                m.live.extend(admitted, bool(indexed))
                out.append((m.live, m.live.ids[n:].clone()))
        return out

    # ---- forward / step ----------------------------------------------------------------
    def add_to_(self, pooled: torch.Tensor, batch: SparseBatch, by_hand: bool = False) -> None:
        """Add every group's delta to ``pooled`` (B, F, D) from the base tables, in place (one
        kernel call for all groups, see live_group.py). ``by_hand``: outside autograd, the
        caller passing the pooled embeddings' gradient to ``backward``."""
        self._correction = None
        if not self.members:
            return
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[0] is batch:
            inputs = prepared[1]
        else:
            inputs = self._inputs(batch)
        pos, hit = inputs.located or self._locate(inputs)
        correction = Correction(
            self.groups,
            inputs.key_bounds,
            pos,
            hit,
            inputs.index,
            inputs.offsets,
            self.feature_index,
            batch.batch_size,
            len(self.feature_names),
        )
        correction.add_to_(pooled, None if by_hand else self._anchor)
        if by_hand or torch.is_grad_enabled():
            self._correction = correction

    @property
    def training(self) -> bool:
        """A correction of this step waits for its gradient (add_to_ under grad or by hand)."""
        return self._correction is not None

    def backward(self, grad: torch.Tensor) -> None:
        """The pooled embeddings' gradient (B, F, D) of a ``by_hand`` add_to_: A's and B's
        gradients for ``step``."""
        if self._correction is not None:
            self._correction.backward(grad)

    def grads_finite(self) -> bool:
        """This step's gradients are finite (True when there are none)."""
        return self._correction is None or self._correction.finite is not False

    def step(self, lr_a: float, lr_b: float) -> None:
        correction, self._correction = self._correction, None
        if correction is not None:
            correction.step(self.a_accum, self.member_lives, self.member_controllers, lr_a, lr_b)

    def drop_grads(self) -> None:
        self._correction = None
