"""LiveEmbedding: a frozen base EmbeddingBag plus a low-rank correction of its active rows.

Served row i = base[i] + (A[slot(i)] @ B) * scale when i is active, else base[i].
Shapes: N base rows, D dim, n active rows, r rank; A (n, r), B (r, D).

Everything but B grows with the active rows n, never with N: A's row k belongs to id
``keys[k]``, and the slot map is a cuckoo hash index (dlrm_core/hash_index.py) from each active
id to 1 + its row. The rows live in storage of ``capacity`` rows, the n active ones first, so
admitting k ids appends k rows and evicting k moves at most k rows from the end into the holes
(the free slots are the storage's tail): both cost O(k) with the index updated in place, never
O(n). On its own the module grows its storage by doubling; the trainer's fused LiveGroups bind it
to a region of their buffers sized by the budget (see group_layout.py).
Per active row the module keeps A's row, its id, its last-use time and a row-wise Adagrad
accumulator; B has Adam moments. Snapshots and the factors file: table_factors.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dlrm_core import key_sort
from dlrm_core.factor_optim import adam_, rowwise_adagrad_
from dlrm_core.hash_index import CuckooIndex
from dlrm_core.kernel import admission_kernel
from dlrm_core.memory_account import MemoryReport
from dlrm_core.model import SparseArch
from dlrm_core.row_budget import index_bits
from dlrm_core.table_factors import TableFactors


@dataclass(frozen=True)
class LiveEmbeddingConfig:
    rank: int = 4  # initial r
    scale: float = 1.0  # delta = A @ B * scale (fixed, so rank changes keep the delta)
    seed: int = 0  # seeds B's initial orthonormal rows

    def __post_init__(self) -> None:
        if not 1 <= self.rank <= 1024:
            raise ValueError(f"rank must be in [1, 1024], got {self.rank}")
        if not (math.isfinite(self.scale) and 0 < self.scale <= 1e3):
            raise ValueError(f"scale must be in (0, 1000], got {self.scale}")


class LiveEmbedding(nn.Module):
    """(values (nnz,), offsets (B,)) -> (B, D), like the EmbeddingBag it wraps (mode sum)."""

    keys: torch.Tensor
    last_used: torch.Tensor
    a_accum: torch.Tensor
    b_m: torch.Tensor
    b_v: torch.Tensor

    def __init__(self, base: nn.EmbeddingBag, config: LiveEmbeddingConfig | None = None):
        super().__init__()
        if base.mode != "sum" or base.padding_idx is not None:
            raise ValueError("LiveEmbedding wraps an EmbeddingBag with mode='sum', no padding")
        self.config = config or LiveEmbeddingConfig()
        self.base = base
        self.base.weight.requires_grad_(False)
        n, d = base.weight.shape
        if self.config.rank > d:
            raise ValueError(f"rank {self.config.rank} exceeds the embedding dim {d}")
        if n >= 2**31 - 1:
            raise ValueError(f"at most 2**31 - 2 rows (int32 index keys), got {n}")
        self.num_rows, self.dim = int(n), int(d)  # of the base table, fixed
        self.scale = self.config.scale
        # called with the (B, D) gradient of each forward's output (the rank controller
        # measures how much of it lies outside span(B))
        self.grad_observer: Callable[[torch.Tensor], None] | None = None
        self._folded: list[torch.Tensor] = []  # base rows changed by folds, see take_folded
        self.time_origin: float | None = None  # last_used holds seconds since this (float32)
        self.b_steps = 0
        # bumped whenever the state is replaced rather than updated in place (a LiveGroup then
        # copies it back into its buffers)
        self.version = 0
        self.index = CuckooIndex.empty(1)  # active id -> 1 + its row
        self._n = 0
        # (keys (C,), A (C, r), last_used (C,), a_accum (C,)): the active rows, then free ones
        self._store = _empty_store(0, self.config.rank)
        gen = torch.Generator().manual_seed(self.config.seed)
        q, _ = torch.linalg.qr(torch.randn(d, self.config.rank, generator=gen))
        self.A = nn.Parameter(torch.zeros(0, self.config.rank))
        self.B = nn.Parameter(q.T.contiguous())  # orthonormal rows, so a new row's delta is 0
        self.register_buffer("keys", torch.zeros(0, dtype=torch.int64))
        self.register_buffer("last_used", torch.zeros(0))
        self.register_buffer("a_accum", torch.zeros(0))
        self.register_buffer("b_m", torch.zeros_like(self.B))
        self.register_buffer("b_v", torch.zeros_like(self.B))

    # ---- sizes -------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        return int(self.B.shape[0])

    @property
    def num_active(self) -> int:
        return self._n

    @property
    def capacity(self) -> int:
        return int(self._store[0].shape[0])

    @property
    def ids(self) -> torch.Tensor:
        """(n,) ids of the active rows, in A's row order."""
        return self.keys

    def memory(self) -> MemoryReport:
        """Bytes of the state, as held: the storage's free rows and the index count too."""
        keys, a, last_used, a_accum = self._store
        return MemoryReport(
            a_bytes=_nbytes(a),
            b_bytes=_nbytes(self.B),
            slot_map_bytes=_nbytes(keys, last_used) + self.index.nbytes,
            optimizer_bytes=_nbytes(a_accum, self.b_m, self.b_v),
            base_bytes=_nbytes(self.base.weight),
            fold_log_bytes=_nbytes(*self._folded),
        )

    # ---- serving -----------------------------------------------------------------------
    def slots(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pos, hit), both (nnz,): A's row of each id where hit, 0 elsewhere."""
        rows = self.index.rows(values).to(torch.int64)
        hit = rows > 0
        return (rows - 1).clamp_(min=0), hit

    def forward(self, values: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        out = self.base(values, offsets)
        if self.num_active == 0:
            return out
        pos, hit = self.slots(values)
        pooled_a = F.embedding_bag(  # (B, r); inactive ids weigh 0
            pos, self.A, offsets, mode="sum", sparse=True, per_sample_weights=hit.to(self.A.dtype)
        )
        out = torch.addmm(out, pooled_a, self.B, alpha=self.scale)  # out + pooled_a B scale
        if self.grad_observer is not None and out.requires_grad:
            out.register_hook(self.grad_observer)
        return out

    def get_delta_weight(self, rows: torch.Tensor) -> torch.Tensor:
        """(len(rows), D) delta of the given rows (zero for inactive rows)."""
        rows = torch.as_tensor(rows, dtype=torch.int64)
        out = torch.zeros(rows.shape[0], self.dim)
        if self.num_active:
            pos, hit = self.slots(rows)
            out[hit] = (self.A.detach()[pos[hit]] @ self.B.detach()) * self.scale
        return out

    def factors(self) -> TableFactors:
        """An immutable snapshot (cloned tensors, rows sorted by id) of the correction."""
        ids, order = key_sort.sort(self.keys)
        return TableFactors(
            ids, self.A.detach().index_select(0, order), self.B.detach().clone(), self.scale
        )

    def load_factors(self, factors: TableFactors) -> None:
        """Serve a copy of ``factors`` (e.g. a published version), so training this module
        never changes them; optimizer state restarts from zero."""
        factors.validate(self.num_rows, self.dim, "factors")
        n, r = factors.num_active, factors.rank
        self.B = nn.Parameter(factors.b.clone())
        self.scale = factors.scale
        self._reset_b_state(r)
        self._replace(factors.ids, factors.a, torch.zeros(n), torch.zeros(n))

    def bind(
        self,
        store: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
        b_state: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
        bits: int,
    ) -> None:
        """Use the given tensors (views into a LiveGroup's buffers whose first n rows hold the
        current state) as the storage, without copying: (keys, A, last_used, a_accum) of the
        region's capacity rows and (B, b_m, b_v); the index gets 2**bits buckets. The group
        updates them in place; A and B do not require grad here, the group trains its buffers."""
        self._store = store
        b, b_m, b_v = b_state
        self._buffers.update(b_m=b_m, b_v=b_v)
        self._parameters["B"] = nn.Parameter(b, requires_grad=False)
        if bits != self.index.bits:
            self._reindex(bits)
        self._expose(self._n, requires_grad=False)

    def _expose(self, n: int, requires_grad: bool | None = None) -> None:
        """Make keys, A, last_used and a_accum the first n rows of the storage."""
        keys, a, last_used, a_accum = self._store
        grad = self.A.requires_grad if requires_grad is None else requires_grad
        self._n = n
        # straight into the registries: Module.__setattr__'s checks cost more than the rest of
        # an admission step
        self._buffers.update(keys=keys[:n], last_used=last_used[:n], a_accum=a_accum[:n])
        self._parameters["A"] = nn.Parameter(a[:n], requires_grad=grad)

    def _replace(
        self, ids: torch.Tensor, a: torch.Tensor, last_used: torch.Tensor, a_accum: torch.Tensor
    ) -> None:
        """New state of its own (not a group's views): storage of exactly n rows, new index."""
        n = int(ids.shape[0])
        self._store = (
            ids.clone(),
            a.detach().clone().contiguous(),
            last_used.clone(),
            a_accum.clone(),
        )
        self._n = n
        self._reindex(index_bits(n))
        self._expose(n, requires_grad=True)
        self.version += 1

    def _reindex(self, bits: int) -> None:
        """A new index of 2**bits buckets (more when needed) over the active rows."""
        keys = self._store[0][: self._n]
        while True:
            index = CuckooIndex.empty(bits)
            if index.assign(keys, torch.arange(self._n)):
                self.index = index
                return
            bits += 1

    # ---- active set --------------------------------------------------------------------
    def activate(
        self,
        values: torch.Tensor,
        now: float,
        max_active: int,
        gate: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[int, int]:
        """Mark ``values`` as used at ``now`` and admit the new ones that pass ``gate`` (given
        the distinct new ids and their counts in ``values``), most frequent first, while the
        active set stays <= max_active. Returns (admitted, refused for lack of room) counts."""
        if self.time_origin is None:
            self.time_origin = float(now)
        stamp = float(now) - self.time_origin
        uniq, counts = torch.unique(values, return_counts=True)
        pos, hit = self.slots(uniq)
        self.last_used[pos[hit]] = stamp
        room = max(max_active - self.num_active, 0)
        new, new_counts = uniq[~hit], counts[~hit]
        if gate is not None and new.numel():
            passed = gate(new, new_counts)
            new, new_counts = new[passed], new_counts[passed]
        if room == 0 or new.numel() == 0:
            return 0, int(new.numel())
        refused = max(int(new.numel()) - room, 0)
        new = new[torch.argsort(new_counts, descending=True, stable=True)[:room]].sort().values
        if self.num_active + new.numel() > self.capacity:  # on its own: grow by doubling
            self._resize(min(max(2 * self.capacity, self.num_active + new.numel()), max_active))
        self.append(new, stamp)
        return int(new.numel()), refused

    def append(self, new: torch.Tensor, stamp: float) -> None:
        """Admit ``new`` (k,) ids that are not active into the free rows (k <= capacity - n),
        with A = 0 and last use ``stamp``: O(k)."""
        n, k = self._n, int(new.numel())
        if k and (int(new.min()) < 0 or int(new.max()) >= self.num_rows):
            raise IndexError(f"ids must be in [0, {self.num_rows}), got {new.min()}..{new.max()}")
        if n + k > self.capacity:
            raise RuntimeError(f"{k} new rows do not fit: {n} of {self.capacity} are active")
        keys, a, last_used, a_accum = self._store
        keys[n : n + k] = new
        a[n : n + k] = 0.0
        last_used[n : n + k] = stamp
        a_accum[n : n + k] = 0.0
        self.extend(k, self.index.assign(new, torch.arange(n, n + k)))

    def extend(self, k: int, indexed: bool) -> None:
        """Activate the k rows after the active ones, written in place (and indexed if so)."""
        if not 0 <= k <= self.capacity - self._n:
            raise ValueError(f"{k} more rows do not fit: {self._n} of {self.capacity} active")
        self._expose(self._n + k)
        if not indexed:
            self._reindex(self.index.bits)

    def fit(self, capacity: int) -> None:
        """Hold storage for at most ``capacity`` rows (>= the active ones) and an index sized
        for them: what a smaller budget leaves room for. A no-op when it already does."""
        if capacity < self._n:
            raise ValueError(f"{self._n} rows are active, more than a capacity of {capacity}")
        if self.capacity > capacity or self.index.bits > index_bits(capacity):
            self._resize(capacity)

    def _resize(self, capacity: int) -> None:
        n, old = self._n, self._store
        self._store = _empty_store(capacity, self.rank)
        for new, cur in zip(self._store, old, strict=True):
            new[:n] = cur[:n]
        self._reindex(index_bits(capacity))
        self._expose(n)
        self.version += 1

    def evict(self, rows: torch.Tensor, fold: bool = True) -> int:
        """Remove ``rows`` from the active set, first folding their delta into the base copy
        (unless fold=False, which discards it). Returns the number of rows removed. O(k): the
        last active rows move into the holes (the admission kernel's evict)."""
        asked = torch.as_tensor(rows, dtype=torch.int64).contiguous()
        n, spec = asked.numel(), self.index.kernel_spec
        found = torch.empty(2, n, dtype=torch.int64)  # the distinct active ids, their rows
        k = admission_kernel.active_rows(spec, asked.data_ptr(), n, *(t.data_ptr() for t in found))
        if k == 0:
            return 0
        ids, pos = found[0, :k], found[1, :k]
        if fold:
            delta = (self.A.detach()[pos] @ self.B.detach()) * self.scale
            with torch.no_grad():
                self.base.weight.index_add_(0, ids, delta)
            self.note_folded(ids)
        if not all(t.is_contiguous() for t in self._store):  # the kernel's layout
            raise RuntimeError("a LiveEmbedding's storage must be contiguous")
        keys, a, used, accum = (t.data_ptr() for t in self._store)
        spec, rank = self.index.kernel_spec, self._store[1].shape[1]
        lost = admission_kernel.evict(spec, keys, a, used, accum, rank, self._n, pos.data_ptr(), k)
        self._expose(self._n - k)  # first: a rebuilt index holds the active rows only
        if lost:
            self._reindex(self.index.bits)  # a cuckoo cycle lost an id (rare)
        return k

    def note_folded(self, ids: torch.Tensor) -> None:
        """Log base rows ``ids`` that a fold changed (see take_folded)."""
        self._folded.append(ids.clone())

    @property
    def folded_pending(self) -> int:
        """Ids in the fold log (a row folded twice counts twice)."""
        return sum(int(t.numel()) for t in self._folded)

    def take_folded(self) -> torch.Tensor:
        """Sorted unique base rows changed by folds since the last call."""
        folded, self._folded = self._folded, []
        return torch.unique(torch.cat(folded)) if folded else torch.zeros(0, dtype=torch.int64)

    def ages(self, now: float) -> torch.Tensor:
        """(n,) seconds since each active row was last used."""
        origin = self.time_origin if self.time_origin is not None else float(now)
        return (float(now) - origin) - self.last_used.to(torch.float64)

    # ---- factors -----------------------------------------------------------------------
    def set_factors(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Replace A (n, k) and B (k, D) for the same active rows (a rank change). Row-wise
        Adagrad state is per row and kept; B's Adam moments restart at the new shape."""
        if a.shape[0] != self.num_active or a.shape[1] != b.shape[0] or b.shape[1] != self.dim:
            raise ValueError(
                f"set_factors needs A ({self.num_active}, k) and B (k, {self.dim}), "
                f"got {tuple(a.shape)} and {tuple(b.shape)}"
            )
        self.B = nn.Parameter(b.detach().contiguous().clone())
        self._reset_b_state(int(b.shape[0]))
        keys, _, last_used, a_accum = self._store
        n = self._n
        self._replace(keys[:n], a, last_used[:n], a_accum[:n])

    def step(self, lr_a: float, lr_b: float) -> None:
        """Apply A.grad (row-wise Adagrad) and B.grad (Adam), then clear both grads."""
        with torch.no_grad():
            if self.A.grad is not None:
                rowwise_adagrad_(self.A.data, self.a_accum, self.A.grad, lr_a)
            if self.B.grad is not None:
                self.b_steps += 1
                adam_(self.B.data, self.B.grad, self.b_m, self.b_v, self.b_steps, lr_b)
        self.A.grad = None
        self.B.grad = None

    def _reset_b_state(self, rank: int) -> None:
        self.b_m, self.b_v = torch.zeros(rank, self.dim), torch.zeros(rank, self.dim)
        self.b_steps = 0


def _nbytes(*ts: torch.Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in ts)


def _empty_store(
    capacity: int, rank: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return (
        torch.zeros(capacity, dtype=torch.int64),
        torch.zeros(capacity, rank),
        torch.zeros(capacity),
        torch.zeros(capacity),
    )


def attach_live_embeddings(
    sparse_arch: SparseArch, names: list[str] | tuple[str, ...], config: LiveEmbeddingConfig
) -> dict[str, LiveEmbedding]:
    """Wrap the named tables of a SparseArch in LiveEmbeddings, in place; returns them."""
    live = {}
    for name in names:
        table = sparse_arch.table(name)
        if not isinstance(table, nn.EmbeddingBag):
            raise ValueError(f"table {name!r} is already a {type(table).__name__}")
        live[name] = LiveEmbedding(table, config)
        sparse_arch.set_table(name, live[name])
    return live
