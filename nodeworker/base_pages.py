"""The trainer's base pages that its folds made private, given back once the shared base holds
the same bytes.

The trainer maps the base tables copy-on-write (shared_memory.map_base_tables): a fold writes a
row, and the kernel copies the row's whole 4 KiB page into the trainer (at D = 16 a page holds
64 rows, so scattered folds copy the whole table within hours: measured by bench/node_memory.py,
3,358 private pages, 13 MiB, after one minute on two 10^6-row tables). Inference writes the same
rows into the shared file when it installs the version that carries them. From then on the
private copy is a duplicate: a page whose private bytes equal the shared file's is dropped
(madvise MADV_DONTNEED, which makes the next access read the file again), so the trainer holds
only the pages whose folds inference has not applied yet.

Nothing the trainer wrote is lost: a page is dropped only while its bytes equal the file's, and
the trainer is the only writer of its mapping (folds run on the trainer's thread, between
releases). A later write to the shared page by inference (delta-sync rows) is then what the
trainer reads, as it does for the pages it never folded.
"""

from __future__ import annotations

import ctypes
import mmap
from pathlib import Path

import numpy as np
import torch

from nodeworker.shared_memory import map_base_table

PAGE = mmap.PAGESIZE
_MADV_DONTNEED = 4
_libc = ctypes.CDLL(None, use_errno=True)
_libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)


class PrivateBasePages:
    """The pages of one table's private mapping ``private`` (N, D) that folds wrote, and the
    same file mapped shared, ``shared`` (N, D) (no copy: the file's pages)."""

    def __init__(self, private: torch.Tensor, shared: torch.Tensor) -> None:
        if private.shape != shared.shape or not private.is_contiguous():
            raise ValueError("the private and shared mappings must be the same (N, D) table")
        if private.data_ptr() % PAGE:
            raise ValueError("the private mapping must start on a page")
        self.row_bytes = private.shape[1] * private.element_size()
        self.nbytes = private.numel() * private.element_size()
        self._private = private.detach().view(-1).view(torch.uint8).numpy()
        self._shared = shared.detach().view(-1).view(torch.uint8).numpy()
        self._address = private.data_ptr()
        self.pending = np.zeros(-(-self.nbytes // PAGE), dtype=bool)  # written, not given back
        self.released = 0  # pages given back so far

    @classmethod
    def of_table(cls, private: torch.Tensor, directory: Path, name: str) -> PrivateBasePages:
        """``private``, a copy-on-write mapping of table ``name``, against its file in
        ``directory`` mapped shared."""
        return cls(private, map_base_table(directory, name, private.shape, shared=True))

    @property
    def private_bytes(self) -> int:
        """Bytes of the pages folds wrote that are not given back (an upper bound: a page is
        copied on its first write)."""
        return int(self.pending.sum()) * PAGE

    def folded(self, ids: torch.Tensor) -> None:
        """Rows ``ids`` were written in the private mapping."""
        start = ids.numpy().astype(np.int64) * self.row_bytes
        self.pending[start // PAGE] = True
        self.pending[(start + self.row_bytes - 1) // PAGE] = True

    def release(self) -> int:
        """Give back the pending pages whose bytes equal the shared file's; returns how many."""
        pages = np.flatnonzero(self.pending)
        full = self.nbytes // PAGE  # pages the table fills; the last one may be partial
        inner = pages[pages < full]
        private = self._private[: full * PAGE].reshape(full, PAGE)
        shared = self._shared[: full * PAGE].reshape(full, PAGE)
        same = inner[(private[inner] == shared[inner]).all(1)].tolist()
        if pages.size and pages[-1] == full and self._tail_equal(full):
            same.append(full)
        for first, count in _runs(same):
            if _libc.madvise(self._address + first * PAGE, count * PAGE, _MADV_DONTNEED):
                raise OSError(ctypes.get_errno(), "madvise(MADV_DONTNEED) on the base failed")
        self.pending[same] = False
        self.released += len(same)
        return len(same)

    def _tail_equal(self, page: int) -> bool:
        lo = page * PAGE
        return bool(np.array_equal(self._private[lo:], self._shared[lo:]))


def _runs(pages: list[int]) -> list[tuple[int, int]]:
    """Sorted page numbers as (first, count) runs of consecutive pages."""
    runs: list[tuple[int, int]] = []
    for page in pages:
        if runs and runs[-1][0] + runs[-1][1] == page:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((page, 1))
    return runs
