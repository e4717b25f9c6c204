import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlrm_core.hash_index import BUCKET, MAX_LOAD, CuckooIndex

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sorted_search_rows(keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    """The reference: 1 + row of each query in ``keys`` by a binary search, 0 if absent."""
    order = keys.argsort()
    ordered = keys[order]
    pos = torch.searchsorted(ordered, queries.to(keys.dtype)).clamp(max=max(keys.numel() - 1, 0))
    if not keys.numel():
        return torch.zeros(queries.shape, dtype=torch.int32)
    hit = ordered[pos] == queries
    return torch.where(hit, order[pos] + 1, 0).to(torch.int32)


def documented_buckets(index: CuckooIndex, key: int) -> list[int]:
    """The hashes as the module documents them: top bits of key * m modulo 2**width."""
    width = index.slots.element_size() * 8
    return [
        ((key * (int(m) % 2**width)) % 2**width) >> (width - index.bits) for m in index.multipliers
    ]


def bucket_rows(index: CuckooIndex, bucket: int) -> list[int]:
    return index.slots[bucket, 1].tolist()


def test_known_rows_hits_and_misses():
    index = CuckooIndex.build(torch.tensor([5, 0, 17], dtype=torch.int32))
    rows = index.rows(torch.tensor([17, 5, 0, 3, 6, 2**31 - 1]))
    assert rows.tolist() == [3, 1, 2, 0, 0, 0]
    assert rows.dtype == torch.int32
    assert index.bits == 1  # the least: two buckets
    assert index.nbytes == 2 * BUCKET * 2 * 4 + 2 * 4  # 16 slots of (key, row), 2 multipliers


@pytest.mark.parametrize(("dtype", "key_range"), [(torch.int32, 2**31 - 1), (torch.int64, 2**40)])
def test_rows_match_the_sorted_search(dtype, key_range):
    gen = torch.Generator().manual_seed(0)
    keys = torch.randint(0, key_range, (5000,), generator=gen, dtype=torch.int64).unique()
    keys = keys[torch.randperm(keys.numel(), generator=gen)].to(dtype)  # rows in any order
    index = CuckooIndex.build(keys)
    assert index.key_dtype == dtype
    queries = torch.cat(
        [
            keys.long(),
            keys.long() + 1,  # neighbours: misses unless also a key
            keys.long() - 1,
            torch.tensor([0, key_range - 1]),
            torch.randint(0, key_range, (5000,), generator=gen),
        ]
    ).clamp(0, key_range - 1)
    rows = index.rows(queries)
    torch.testing.assert_close(rows, sorted_search_rows(keys, queries), rtol=0, atol=0)
    assert bool((rows[: keys.numel()] == torch.arange(1, keys.numel() + 1)).all())
    assert keys.numel() / (index.slots.numel() // 2) <= MAX_LOAD


def test_every_key_is_in_one_of_its_documented_buckets_mostly_its_first():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randperm(2**24, generator=gen)[:20_000].to(torch.int32)
    index = CuckooIndex.build(keys)
    assert keys.numel() / (index.slots.numel() // 2) > 0.6  # a loaded table, not an empty one
    first = 0
    for row, key in enumerate(keys.tolist(), start=1):
        b0, b1 = documented_buckets(index, key)
        assert row in bucket_rows(index, b0) + bucket_rows(index, b1)
        first += row in bucket_rows(index, b0)
    assert first / keys.numel() >= 0.9  # one cache line per lookup for nearly every key


def test_keys_that_overflow_their_first_bucket_take_their_second():
    probe = CuckooIndex.build(torch.arange(64, dtype=torch.int32))
    crowded = [k for k in range(40_000) if documented_buckets(probe, k)[0] == 0][:64]
    keys = torch.tensor(crowded, dtype=torch.int32)
    index = CuckooIndex.build(keys)
    assert index.bits == probe.bits
    assert sum(r > 0 for r in bucket_rows(index, 0)) == BUCKET  # full; the rest moved on
    queries = torch.arange(40_000)
    torch.testing.assert_close(index.rows(queries), sorted_search_rows(keys, queries))


def test_more_keys_than_their_two_buckets_hold_get_a_bigger_table():
    n = 2 * BUCKET + 1
    probe = CuckooIndex.build(torch.arange(n, dtype=torch.int32))
    by_buckets: dict[tuple[int, ...], list[int]] = {}
    for k in range(200_000):
        by_buckets.setdefault(tuple(sorted(documented_buckets(probe, k))), []).append(k)
    same = next(ks for ks in by_buckets.values() if len(ks) >= n)[:n]  # 17 keys, 16 slots
    index = CuckooIndex.build(torch.tensor(same, dtype=torch.int32))
    assert index.bits > probe.bits
    queries = torch.tensor([*same, 0, 1, 2, 3])
    torch.testing.assert_close(index.rows(queries), sorted_search_rows(torch.tensor(same), queries))


def test_empty_index_misses_everything():
    index = CuckooIndex.build(torch.zeros(0, dtype=torch.int64))
    assert index.rows(torch.tensor([0, 1, 2**40])).tolist() == [0, 0, 0]
    assert index.rows(torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_bad_keys_are_refused():
    with pytest.raises(TypeError):
        CuckooIndex.build(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match=">= 0"):
        CuckooIndex.build(torch.tensor([3, -1]))


@settings(max_examples=60, deadline=None)
@given(
    keys=st.sets(st.integers(0, 2**40), max_size=300),
    queries=st.lists(st.integers(0, 2**40), max_size=100),
    int32=st.booleans(),
)
def test_property_rows_agree_with_the_sorted_search(keys, queries, int32):
    dtype = torch.int32 if int32 else torch.int64
    keys_t = torch.tensor(sorted(k % 2**31 if int32 else k for k in keys), dtype=torch.int64)
    keys_t = keys_t.unique().to(dtype)
    queries_t = torch.tensor(
        [q % 2**31 if int32 else q for q in queries] + keys_t.tolist(), dtype=torch.int64
    )
    index = CuckooIndex.build(keys_t)
    torch.testing.assert_close(index.rows(queries_t), sorted_search_rows(keys_t, queries_t))


def test_queries_outside_the_key_dtype_are_not_found_instead_of_wrapping():
    index = CuckooIndex.build(torch.tensor([5, 0, 17], dtype=torch.int32))
    queries = torch.tensor([5 + 2**32, -(2**32) + 17, -1, 17])
    assert index.rows(queries).tolist() == [0, 0, 0, 3]


def test_assign_and_unassign_update_the_index_in_place():
    index = CuckooIndex.empty(2)  # 4 buckets: 32 slots for 27 keys forces cuckoo moves
    keys = torch.randperm(10_000, generator=torch.Generator().manual_seed(3))[:27]
    assert index.assign(keys, torch.arange(27))
    assert torch.equal(index.rows(keys), torch.arange(1, 28, dtype=torch.int32))
    assert index.unassign(torch.cat([keys[:10], torch.tensor([10_001])])) == 10
    assert index.assign(keys[10:15], torch.arange(100, 105))  # moved rows
    rows = index.rows(keys)
    assert rows[:10].tolist() == [0] * 10
    assert rows[10:15].tolist() == list(range(101, 106))
    assert rows[15:].tolist() == list(range(16, 28))
    full = CuckooIndex.empty(1)  # 16 slots cannot take 40 keys: reported, not hidden
    assert not full.assign(torch.arange(40), torch.arange(40))
