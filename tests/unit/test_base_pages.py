"""PrivateBasePages against /proc: the pages a trainer's folds copied are given back once the
shared file holds the same bytes, and then read the file again."""

import re

import pytest
import torch

from nodeworker.base_pages import PAGE, PrivateBasePages

D = 16  # 64-byte rows: 64 rows a page


def mappings(path, rows, dim=D):
    size = rows * dim
    private = torch.from_file(str(path), shared=False, size=size, dtype=torch.float32)
    shared = torch.from_file(str(path), shared=True, size=size, dtype=torch.float32)
    return private.view(rows, dim), shared.view(rows, dim)


def anonymous_bytes(path) -> int:
    """Anonymous (copied-on-write) bytes in this process's mappings of ``path``."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                inside = line.rstrip().endswith(str(path))
            elif inside and line.startswith("Anonymous:"):
                total += int(line.split()[1]) * 1024
    return total


def test_pages_are_given_back_once_the_shared_file_holds_the_fold(tmp_path):
    assert PAGE == 4096
    path = tmp_path / "base-user.f32"
    rows = 64 * 4
    path.write_bytes(torch.randn(rows, D).numpy().tobytes())
    private, shared = mappings(path, rows)
    pages = PrivateBasePages(private, shared)
    assert anonymous_bytes(path) == 0
    private[0] += 1.0  # a fold on page 0 and one on page 3
    private[200] += 2.0
    pages.folded(torch.tensor([0, 200]))
    assert anonymous_bytes(path) == 2 * PAGE and pages.private_bytes == 2 * PAGE
    assert pages.release() == 0  # inference has applied neither
    shared[0] = private[0]  # inference installs the version carrying the fold of row 0
    assert pages.release() == 1 and pages.private_bytes == PAGE
    assert anonymous_bytes(path) == PAGE  # page 0 is the file's again
    shared[1] = 7.0  # a later write to the file (a delta-sync row) on page 0 ...
    assert torch.equal(private[1], torch.full((D,), 7.0))  # ... is what the trainer reads
    assert not torch.equal(private[200], shared[200])  # page 3 keeps the trainer's fold
    shared[200] = private[200]
    assert pages.release() == 1 and anonymous_bytes(path) == 0 and pages.released == 2


def test_a_row_across_two_pages_and_a_partial_last_page(tmp_path):
    path = tmp_path / "base-item.f32"
    rows, dim = 50, 24  # 96-byte rows: row 42 spans pages 0 and 1; 4800 bytes, page 1 partial
    path.write_bytes(torch.zeros(rows, dim).numpy().tobytes())
    private, shared = mappings(path, rows, dim)
    pages = PrivateBasePages(private, shared)
    private[42] = 1.0
    pages.folded(torch.tensor([42]))
    assert anonymous_bytes(path) == 2 * PAGE and pages.private_bytes == 2 * PAGE
    shared[42] = 1.0
    assert pages.release() == 2 and anonymous_bytes(path) == 0
    with pytest.raises(ValueError, match="same"):
        PrivateBasePages(private, shared[:10])
