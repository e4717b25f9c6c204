"""The admission kernel (dlrm_core/_admission_kernel.c) against the torch code it replaced.

The oracles live here only: the sketch as torch ops (gather, then scatter_reduce amax, halving)
and LiveGroups.admit as it was, table by table through each index (LiveEmbedding.append). Two
trainers built alike take the same batches, one through the kernel, one through the oracle, and
must hold the same rows in the same order, the same index, times, refusals and sketch counters,
through random shapes, repeated ids, empty batches and full tables whose evictions make room.
"""

import pytest
import torch

from dlrm_core.admission import DEPTH, SightingSketch
from dlrm_core.batch import SparseBatch
from dlrm_core.group_layout import LiveGroups
from dlrm_core.hash_index import CuckooIndex
from dlrm_core.kernel import admission_kernel
from dlrm_core.key_sort import batch_keys, sort
from dlrm_core.live_embedding import LiveEmbeddingConfig
from dlrm_core.model import DLRM, DLRMConfig
from dlrm_core.rank_policy import RankPolicy
from dlrm_core.trainer import LiveTrainer, TrainerConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MAX_COUNT = 15
MULTIPLIERS = (0xD6E8FEB86659FD93, 0xA0761D6478BD642F)


class TorchSketch:
    """The count-min sketch as admission.py computed it with torch ops (the oracle)."""

    def __init__(self, width_bits: int) -> None:
        self.width_bits = width_bits
        self.counters = torch.zeros(DEPTH, 1 << width_bits, dtype=torch.uint8)
        signed = [m - (1 << 64) if m >= 1 << 63 else m for m in MULTIPLIERS]
        self.multipliers = torch.tensor(signed, dtype=torch.int64).view(DEPTH, 1)
        self.since_reset = 0

    @property
    def nbytes(self) -> int:
        return self.counters.numel() + 8  # and the int64 since_reset, as SightingSketch holds

    def sight(self, ids: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        if ids.numel() == 0:
            return torch.zeros(0, dtype=torch.int64)
        product = ids.view(1, -1) * self.multipliers
        buckets = (product >> (64 - self.width_bits)) & ((1 << self.width_bits) - 1)
        current = torch.gather(self.counters, 1, buckets).to(torch.int64)
        estimate = (current.min(0).values + counts).clamp_(max=MAX_COUNT)
        raised = estimate.to(torch.uint8).expand(DEPTH, -1)
        self.counters.scatter_reduce_(1, buckets, raised, reduce="amax")
        self.since_reset += int(ids.numel())
        if self.since_reset >= self.counters.shape[1] // 2:
            self.counters >>= 1
            self.since_reset = 0
        return estimate


def oracle_admit(groups: LiveGroups, batch: SparseBatch, now: float):
    """LiveGroups.admit before the kernel: per table, torch ops and LiveEmbedding.append."""
    inputs = groups._inputs(batch)
    groups._prepared = (batch, inputs)
    out = []
    bounds = inputs.member_bounds.tolist()
    for t, m in enumerate(groups.members):
        live = m.live
        if live.time_origin is None:
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
    pos = torch.zeros(inputs.keys.shape, dtype=torch.int64)
    hit = torch.zeros(inputs.keys.shape, dtype=torch.bool)
    for t, m in enumerate(groups.members):
        k0, k1 = bounds[t], bounds[t + 1]
        rows = m.live.index.rows(inputs.keys[k0:k1] - m.key_offset).to(torch.int64)
        hit[k0:k1] = rows > 0
        pos[k0:k1] = (rows - 1).clamp_(min=0) + m.start
    inputs.located = pos, hit
    return out


NAMES = ("a", "b", "c", "d")
ROWS = (300, 50, 2000, 7)


def make_trainer(admit_after: int) -> LiveTrainer:
    torch.manual_seed(0)
    cfg = DLRMConfig(NAMES, ROWS, 2, 8, (16, 8), (16, 1))
    policy = RankPolicy(r_min=1, r_max=4, admit_after=admit_after, evict_batch=0.05)
    config = TrainerConfig(live=LiveEmbeddingConfig(rank=2), policy=policy)
    # a: fills (refusals, evictions); b: room for all; c: a small sketch; d: tiny
    budgets = {"a": 2_000, "b": 20_000, "c": 4_000, "d": 2_000}
    return LiveTrainer(DLRM(cfg), config, budgets=budgets)


def random_batch(gen: torch.Generator, size: int, hot: int) -> SparseBatch:
    """Bags of 0..3 ids, from a hot set (repeats within and across bags) and uniform."""
    values, offsets = [], []
    for rows in ROWS:
        lengths = torch.randint(0, 4, (size,), generator=gen)
        n = int(lengths.sum())
        hot_ids = torch.randint(0, min(hot, rows), (n,), generator=gen)
        ids = torch.where(torch.rand(n, generator=gen) < 0.6, hot_ids, torch.randint(0, rows, (n,)))
        values.append(ids)
        offsets.append(torch.cumsum(lengths, 0) - lengths)
    return SparseBatch(
        NAMES,
        tuple(values),
        tuple(offsets),
        torch.randn(size, 2, generator=gen),
        torch.zeros(size),
        torch.zeros(size, dtype=torch.float64),
        torch.arange(size),
    )


def assert_same_state(kernel: LiveTrainer, oracle: LiveTrainer, step: int) -> None:
    for name in NAMES:
        if name not in kernel.lives:
            continue
        k, o = kernel.lives[name], oracle.lives[name]
        assert torch.equal(k.ids, o.ids), (step, name)
        assert torch.equal(k.last_used, o.last_used), (step, name)
        assert torch.equal(k.A.detach(), o.A.detach()) and torch.equal(k.a_accum, o.a_accum)
        probe = torch.arange(k.num_rows)
        assert torch.equal(k.index.rows(probe), o.index.rows(probe)), (step, name)
        kc, oc = kernel.controllers[name], oracle.controllers[name]
        assert kc._refused == oc._refused, (step, name)
        if kc.sketch is not None:
            assert isinstance(oc.sketch, TorchSketch)
            assert torch.equal(kc.sketch.counters, oc.sketch.counters), (step, name)
            assert int(kc.sketch.since_reset) == oc.sketch.since_reset


@pytest.mark.parametrize("admit_after", [1, 2, 3])
def test_the_kernel_admits_as_the_torch_path(admit_after):
    kernel, oracle = make_trainer(admit_after), make_trainer(admit_after)
    for ctl in oracle.controllers.values():
        if ctl.sketch is not None:
            ctl.sketch = TorchSketch(ctl.sketch.width_bits)  # type: ignore[assignment]
    assert (kernel.controllers["c"].sketch is not None) == (admit_after > 1)
    gen = torch.Generator().manual_seed(admit_after)
    admitted_any = refused_any = evicted = 0
    for step in range(40):
        size = [0, 1, 5, 64][step % 4] if step % 7 else 200  # empty batches too
        batch = random_batch(gen, size, hot=[5, 40, 400][step % 3])
        now = 1.0 + 0.5 * step
        for trainer in (kernel, oracle):
            trainer.groups.sync()
        got = kernel.groups.admit(batch, now)
        want = oracle_admit(oracle.groups, batch, now)
        assert [(lv.config, ids.tolist()) for lv, ids in got] == [
            (lv.config, ids.tolist()) for lv, ids in want
        ]
        k_in, o_in = kernel.groups._prepared[1], oracle.groups._prepared[1]
        assert torch.equal(k_in.located[0], o_in.located[0])
        assert torch.equal(k_in.located[1], o_in.located[1])
        admitted_any += sum(ids.numel() for _, ids in got)
        refused_any += kernel.controllers["a"]._refused
        assert_same_state(kernel, oracle, step)
        if step % 3 == 2:  # full tables evict their coldest rows for the refused ids
            for trainer in (kernel, oracle):
                for name, ctl in trainer.controllers.items():
                    evicted += ctl.make_room(batch.feature(name)[0], now)
                    ctl.live.take_folded()  # what the trainer's publish does: room to fold
            assert_same_state(kernel, oracle, step)
    assert admitted_any > 0 and refused_any > 0 and evicted > 0


def test_a_lost_index_key_rebuilds_the_index():
    """An index too small for the rows admitted loses a key to a cuckoo cycle: the kernel says
    so and the table rebuilds its index, which then finds every active row."""
    trainer = make_trainer(admit_after=1)
    trainer.groups.sync()
    live = trainer.lives["c"]
    live.index = CuckooIndex.empty(1)  # 16 slots for the region's many rows
    gen = torch.Generator().manual_seed(5)
    trainer.groups.admit(random_batch(gen, 200, hot=2000), now=1.0)
    assert live.num_active > 16 and live.index.bits > 1
    pos, hit = live.slots(live.ids)
    assert bool(hit.all()) and torch.equal(pos, torch.arange(live.num_active))


def test_the_kernel_refuses_keys_outside_their_tables_and_changes_nothing():
    trainer = make_trainer(admit_after=1)
    groups = trainer.groups
    groups.sync()
    batch = random_batch(torch.Generator().manual_seed(1), 32, hot=10)
    inputs = groups._inputs(batch)
    tables = tuple(groups._table_spec(m, None, 1.0) for m in groups.members)
    before = groups.keys.clone(), groups.last_used.clone()
    bad_keys = inputs.keys.clone()
    bad_keys[-1] = groups.members[-1].key_offset + ROWS[-1]  # one past the last table's rows
    bad_bounds = inputs.member_bounds.clone()
    bad_bounds[1] = bad_bounds[2] + 1  # out of order
    bad_counts = inputs.counts.clone()
    bad_counts[0] = -1
    cases = [
        (bad_keys, inputs.counts, inputs.member_bounds),
        (inputs.keys, inputs.counts, bad_bounds),
        (inputs.keys, bad_counts, inputs.member_bounds),
    ]
    for keys, counts, bounds in cases:
        out = torch.empty(len(tables), 3, dtype=torch.int64)
        pos, hit = torch.empty_like(keys), torch.empty(keys.shape, dtype=torch.bool)
        with pytest.raises(IndexError, match="out of range"):
            admission_kernel.admit(
                tables, keys.data_ptr(), counts.data_ptr(), bounds.data_ptr(), keys.numel(),
                pos.data_ptr(), hit.data_ptr(), out.data_ptr(), False,
            )  # fmt: skip
    assert torch.equal(groups.keys, before[0]) and torch.equal(groups.last_used, before[1])
    assert all(live.num_active == 0 for live in trainer.lives.values())


@pytest.mark.parametrize("width_bits", [1, 4, 12])
def test_the_sketch_counts_as_the_torch_ops(width_bits):
    """Random calls (repeated estimates, saturating counts, empty calls, halvings) give the
    same estimates, counters and reset count as the torch oracle."""
    gen = torch.Generator().manual_seed(width_bits)
    sketch, oracle = SightingSketch(width_bits), TorchSketch(width_bits)
    for _ in range(60):
        k = int(torch.randint(0, 40, (1,), generator=gen))
        ids = torch.randperm(5_000, generator=gen)[:k]  # distinct, as the gate gets them
        counts = torch.randint(1, 20, (k,), generator=gen)
        assert torch.equal(sketch.sight(ids, counts), oracle.sight(ids, counts))
        assert torch.equal(sketch.counters, oracle.counters)
        assert int(sketch.since_reset) == oracle.since_reset
    assert sketch.nbytes == oracle.nbytes  # its tensors' bytes


def test_the_sketch_refuses_negative_counts_and_mismatched_shapes():
    sketch = SightingSketch(4)
    with pytest.raises(ValueError, match="counts must be >= 0"):
        sketch.sight(torch.tensor([1, 2]), torch.tensor([1, -1]))
    with pytest.raises(ValueError, match=r"\(k,\) each"):
        sketch.sight(torch.tensor([1, 2]), torch.tensor([1]))
    assert int(sketch.counters.sum()) == 0 and int(sketch.since_reset) == 0


@pytest.mark.parametrize("seed", range(6))
def test_the_radix_sort_is_torch_sort(seed):
    """The radix sort's order is torch.sort's (stable): empty, one key, all equal, negative,
    wide and narrow key ranges, many repeats."""
    gen = torch.Generator().manual_seed(seed)
    n = [0, 1, 7, 1000, 9000, 40_000][seed]
    span = [1, 3, 2**11, 2**22 + 5, 2**40, 2**62][seed]
    keys = torch.randint(0, span, (n,), generator=gen) - (span // 2 if seed % 2 else 0)
    if seed == 4:
        keys[:10] = torch.tensor([-(2**63), 2**63 - 1] * 5)  # the extremes of int64
    ordered, order = sort(keys)
    want_ordered, want_order = torch.sort(keys, stable=True)
    assert torch.equal(ordered, want_ordered) and torch.equal(order, want_order)


@pytest.mark.parametrize("seed", range(6))
def test_active_rows_are_torch_unique_and_the_index_hits(seed):
    """active_rows (LiveEmbedding.evict's lookup) against torch.unique, the index's lookup and
    the hits kept: ids repeated, negative, beyond int32, absent, none; int32 and int64 keys."""
    gen = torch.Generator().manual_seed(seed)
    dtype = (torch.int32, torch.int64)[seed % 2]
    stored = torch.randperm(5000, generator=gen)[: [0, 1, 40, 700, 3000, 4999][seed]]
    index = CuckooIndex.build(stored.to(dtype))
    n = [0, 1, 5, 300, 4000, 9000][seed]
    asked = torch.randint(-50, 6000, (n,), generator=gen)
    if n > 10:
        asked[:3] = torch.tensor([2**31, 2**40, -(2**63)])
    ids, rows = torch.zeros(2, n, dtype=torch.int64)
    k = admission_kernel.active_rows(
        index.kernel_spec, asked.data_ptr(), n, ids.data_ptr(), rows.data_ptr()
    )
    want = torch.unique(asked)
    found = index.rows(want).to(torch.int64)
    hit = found > 0
    assert torch.equal(ids[:k], want[hit]) and torch.equal(rows[:k], found[hit] - 1)


@pytest.mark.parametrize("seed", range(8))
def test_batch_keys_are_torch_unique_over_the_fused_bags(seed):
    """batch_keys against torch: the features' ids shifted into one key space (cat), their
    distinct keys, inverse and counts (unique), each feature's first key (searchsorted) and the
    bags' starts feature after feature; features without ids, a batch of one, tables of one row
    and of 2**40 rows, ids repeated within and across bags."""
    gen = torch.Generator().manual_seed(seed)
    features, batch = int(torch.randint(1, 6, (1,), generator=gen)), [1, 3, 40, 512][seed % 4]
    rows = [
        int(torch.randint(1, [2, 50, 10**6, 2**40][(seed + t) % 4], (1,), generator=gen))
        for t in range(features)
    ]
    values, offsets, key_offsets, key = [], [], [], 0
    for t, n in enumerate(rows):
        lengths = torch.randint(0, 3 if t != 1 else 1, (batch,), generator=gen)
        values.append(torch.randint(0, n, (int(lengths.sum()),), generator=gen))
        offsets.append(torch.cumsum(lengths, 0) - lengths)
        key_offsets.append(key)
        key += n + int(torch.randint(0, 3, (1,), generator=gen))
    uniq, index, counts, fused, bounds = batch_keys(values, offsets, key_offsets, rows)
    keys = torch.cat([v + k for v, k in zip(values, key_offsets, strict=True)])
    want = torch.unique(keys, return_inverse=True, return_counts=True)
    for got, expected in zip((uniq, index, counts), want, strict=True):
        assert torch.equal(got, expected)
    starts = torch.tensor([0, *[v.numel() for v in values]]).cumsum(0)[:-1]
    assert torch.equal(fused, (torch.stack(offsets) + starts.unsqueeze(1)).view(-1))
    assert torch.equal(bounds, torch.searchsorted(uniq, torch.tensor([*key_offsets, key])))


def test_batch_keys_refuse_ids_out_of_range_and_overlapping_key_ranges():
    values, offsets = (
        [torch.tensor([0, 3]), torch.tensor([1])],
        [torch.tensor([0]), torch.tensor([0])],
    )
    with pytest.raises(IndexError, match=r"member 0: ids must be in \[0, 3\)"):
        batch_keys(values, offsets, [0, 4], [3, 2])
    with pytest.raises(IndexError, match="member 1"):
        batch_keys(values, [offsets[0], offsets[1]], [0, 5], [4, 1])
    with pytest.raises(ValueError, match="ascending and disjoint"):
        batch_keys(values, offsets, [0, 3], [4, 2])
    with pytest.raises(TypeError, match="int64"):
        batch_keys([values[0].int()], offsets[:1], [0], [4])


def test_the_sorts_refuse_other_dtypes():
    with pytest.raises(TypeError, match="1-d int64"):
        sort(torch.zeros(2, 2, dtype=torch.int64))
