import pytest
import torch

from dlrm_core.batch import SparseBatch


def make_batch():
    return SparseBatch.from_ids(
        ["user", "genre"],
        [[[3], [5], [3]], [[1, 2], [], [4]]],
        dense=torch.arange(6, dtype=torch.float32).reshape(3, 2),
        labels=torch.tensor([1.0, 0.0, 1.0]),
        timestamps=torch.tensor([10.0, 11.0, 12.0]),
        request_ids=torch.tensor([100, 101, 102]),
    )


def test_layout_follows_embeddingbag_offsets():
    batch = make_batch()
    values, offsets = batch.feature("genre")
    assert values.tolist() == [1, 2, 4] and offsets.tolist() == [0, 2, 2]
    assert batch.lengths(1).tolist() == [2, 0, 1]
    assert batch.batch_size == 3


def test_select_and_concat_round_trip():
    batch = make_batch()
    picked = batch.select([2, 0])
    assert picked.feature("genre")[0].tolist() == [4, 1, 2]
    assert picked.request_ids.tolist() == [102, 100]
    back = SparseBatch.concat([batch.select([0]), batch.select([1, 2])])
    for a, b in zip(back.values + back.offsets, batch.values + batch.offsets, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(back.dense, batch.dense)


def test_select_picks_every_bag_in_order_on_random_multi_hot_batches():
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        n = int(torch.randint(1, 40, (1,), generator=gen))

        def bag() -> list[int]:
            size = int(torch.randint(0, 4, (1,), generator=gen))  # 0..3 ids, empty bags too
            return torch.randint(0, 50, (size,), generator=gen).tolist()

        ids = [[bag() for _ in range(n)] for _ in range(3)]
        batch = SparseBatch.from_ids(["a", "b", "c"], ids, torch.rand(n, 2), torch.ones(n))
        index = torch.randint(0, n, (int(torch.randint(0, 2 * n, (1,), generator=gen)),),
                              generator=gen)  # fmt: skip
        picked = batch.select(index)
        for f in range(3):
            want = [v for b in index.tolist() for v in ids[f][b]]
            assert picked.values[f].tolist() == want
            assert picked.lengths(f).tolist() == [len(ids[f][b]) for b in index.tolist()]
        assert torch.equal(picked.dense, batch.dense[index])


def test_inconsistent_batches_are_refused():
    batch = make_batch()
    with pytest.raises(ValueError, match="offsets of 'user' must be"):
        SparseBatch(
            batch.keys,
            batch.values,
            (batch.offsets[0][:2], batch.offsets[1]),
            batch.dense,
            batch.labels,
            batch.timestamps,
            batch.request_ids,
        )
    with pytest.raises(ValueError, match="point past its values"):
        SparseBatch(
            batch.keys,
            (batch.values[0][:1], batch.values[1]),
            batch.offsets,
            batch.dense,
            batch.labels,
            batch.timestamps,
            batch.request_ids,
        )


def with_offsets(batch: SparseBatch, offsets: tuple[torch.Tensor, ...]) -> SparseBatch:
    return SparseBatch(
        batch.keys,
        batch.values,
        offsets,
        batch.dense,
        batch.labels,
        batch.timestamps,
        batch.request_ids,
    )


def test_each_bad_offsets_names_its_feature():
    batch = make_batch()  # genre offsets [0, 2, 2] over 3 values
    user = batch.offsets[0]
    for bad, problem in (
        (torch.tensor([1, 2, 2]), "must start at 0 and never decrease"),
        (torch.tensor([0, 2, 1]), "must start at 0 and never decrease"),
        (torch.tensor([0, 2, 4]), "point past its values"),
    ):
        with pytest.raises(ValueError, match=f"offsets of 'genre' {problem}"):
            with_offsets(batch, (user, bad))
    assert with_offsets(batch, (user, torch.tensor([0, 3, 3]))).lengths(1).tolist() == [3, 0, 0]


def test_from_ids_with_no_rows_or_no_features():
    empty = SparseBatch.from_ids(["a", "b"], [[], []], torch.zeros(0, 1), torch.zeros(0))
    assert empty.batch_size == 0 and [v.numel() for v in empty.values] == [0, 0]
    none = SparseBatch.from_ids([], [], torch.zeros(2, 1), torch.zeros(2))
    assert none.batch_size == 2 and none.values == ()
    bags = SparseBatch.from_ids(["a"], [[[], [], [7, 8]]], torch.zeros(3, 0), torch.zeros(3))
    assert bags.values[0].tolist() == [7, 8] and bags.offsets[0].tolist() == [0, 0, 0]
