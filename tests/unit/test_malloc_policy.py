"""The node's malloc settings and trim, against /proc: a fresh interpreter frees holes of small
buffers (below the mmap threshold, so they live in the heap) under buffers it keeps; their
pages stay resident until ``trim_native_heap`` gives them back."""

from __future__ import annotations

import ctypes
import multiprocessing
import os

from dlrm_core.malloc_policy import MMAP_THRESHOLD, bound_native_heap, trim_native_heap
from nodeworker.runtime_metrics import smaps_rollup

HOLE = 16 << 10  # below MMAP_THRESHOLD: from the heap


def _anon() -> int:
    return smaps_rollup(os.getpid())["Pss_Anon"]  # type: ignore[index]


def _freed_holes_stay_until_trimmed() -> tuple[int, int]:
    assert bound_native_heap()
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    blocks = [libc.malloc(HOLE) for _ in range(2048)]  # 32 MiB
    for block in blocks:
        ctypes.memset(block, 1, HOLE)  # resident
    before = _anon()
    for block in blocks[::2]:  # holes between kept blocks: the heap's top cannot shrink
        libc.free(block)
    freed = _anon()
    assert trim_native_heap()
    trimmed = _anon()
    for block in blocks[1::2]:
        libc.free(block)
    return before - freed, freed - trimmed


def test_freed_holes_stay_resident_until_the_heap_is_trimmed():
    assert HOLE < MMAP_THRESHOLD
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        kept_by_free, given_back = pool.apply(_freed_holes_stay_until_trimmed)
    # 16 MiB freed in 16 KiB holes: free alone gives back none of it, the trim the whole
    # pages inside each hole (3 of its 4 or 5: a chunk's header shifts it off page bounds)
    assert kept_by_free < 1 << 20, kept_by_free
    assert given_back >= 10 << 20, given_back
