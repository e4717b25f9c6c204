import numpy as np
import pytest

from dlrm_core.readers.hashing import MISSING_ROW, fnv1a64, hash_ids


def test_fnv1a64_matches_published_test_vectors():
    # FNV-1a 64-bit reference values (http://www.isthe.com/chongo/tech/comp/fnv/).
    got = fnv1a64(["", "a", "foobar"]).tolist()
    assert got == [0xCBF29CE484222325, 0xAF63DC4C8601EC8C, 0x85944171F73967E8]


def test_fnv1a64_independent_of_batch_padding():
    # numpy pads shorter strings to the longest one: the hash must not see the padding.
    alone = fnv1a64(["ab"])[0]
    assert fnv1a64(["ab", "a much longer value"])[0] == alone
    assert fnv1a64(np.array(["ab", "x"]))[0] == alone


def test_hash_ids_is_pinned_forever():
    # Changing these breaks every saved model and factor file: the hash must never change.
    assert hash_ids(["a", "foobar", "68fd1e64", "é", "日本", ""], 1000).tolist() == [
        149, 436, 405, 155, 969, 0,
    ]  # fmt: skip


def test_hash_ids_range_missing_row_and_spread():
    values = [f"v{i}" for i in range(100_000)]
    ids = hash_ids(values, 1001)
    assert ids.dtype == np.int64
    assert ids.min() >= 1 and ids.max() <= 1000  # row 0 only for the empty string
    counts = np.bincount(ids, minlength=1001)[1:]
    # 100 per row expected; a uniform hash keeps every row within +-50% here.
    assert counts.min() > 50 and counts.max() < 150
    assert hash_ids(["", "x", ""], 7).tolist()[0::2] == [MISSING_ROW, MISSING_ROW]


def test_hash_ids_validation_and_empty():
    assert hash_ids([], 10).shape == (0,)
    with pytest.raises(ValueError, match="num_rows >= 2"):
        hash_ids(["a"], 1)
