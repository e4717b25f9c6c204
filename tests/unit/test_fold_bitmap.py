import numpy as np
import pytest
import torch

from dlrm_core.fold_bitmap import FoldBitmap


def test_marks_match_a_set_of_the_folded_ids_and_the_bytes_stay_fixed():
    gen = torch.Generator().manual_seed(0)
    rows = 1_000_003  # not a multiple of 8: the last byte is partly used
    bits, reference = FoldBitmap(rows), set()
    assert bits.nbytes == FoldBitmap.nbytes_for(rows) == 125_001
    assert bits.ids().numel() == 0
    for _ in range(30):  # batches with repeats, in any order, up to every row folded
        ids = torch.randint(0, rows, (50_000,), generator=gen)
        bits.add(ids)
        reference.update(ids.tolist())
    bits.add(torch.tensor([0, rows - 1, rows - 1]))
    reference.update([0, rows - 1])
    got = bits.ids()
    assert got.dtype == torch.int64
    assert got.tolist() == sorted(reference)
    bits.add(torch.arange(rows))  # every row folded: still the same bytes
    assert bits.nbytes == 125_001 and torch.equal(bits.ids(), torch.arange(rows))


def test_ids_outside_the_table_are_refused_and_nothing_is_marked():
    bits = FoldBitmap(10)
    for bad in ([10], [-1], [3, 11]):
        with pytest.raises(IndexError, match=r"\[0, 10\)"):
            bits.add(torch.tensor(bad))
    assert bits.ids().numel() == 0
    bits.add(torch.zeros(0, dtype=torch.int64))
    bits.add(torch.from_numpy(np.array([9], dtype=np.int32)).to(torch.int64))
    assert bits.ids().tolist() == [9]
    with pytest.raises(ValueError, match="num_rows"):
        FoldBitmap(-1)
