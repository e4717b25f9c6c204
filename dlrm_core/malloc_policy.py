"""glibc malloc settings for the node's long-running processes, so their native heap stays flat.

Both processes free and reallocate buffers of varying sizes many times a second (a factor
version's copies, its serving layout, a publish's fold patch, pickled messages). glibc's
dynamic mmap threshold rises to the size of every mmapped chunk freed (up to 32 MiB), after
which such buffers come from the brk heap and the per-thread arenas, where freed holes of one
size rarely fit the next request and the top is trimmed only above 128 KiB of free space: the
trainer's heap grew ~11 MiB and inference's anonymous memory ~8 MiB over a 300 s replay
(bench/node_memory.py) while the tensors they hold did not. A fixed mmap threshold sends every
buffer from ``MMAP_THRESHOLD`` up to its own mapping, returned to the OS on free; a low trim
threshold gives the heap's free top back; and few arenas keep threads' free lists shared.

That still leaves the pages inside free chunks below the top: the training steps' and a
publish's temporaries of a few KiB each leave holes whose pages stay resident until a request
reuses them. Measured with the node's trainer shapes (60 warm-up steps, then 900 steps at
batch 256): malloc's bytes in use stayed flat (+0.03 MiB) while its free bytes grew 1.0 MiB
and the process's anonymous pages 1.3 MiB; one ``malloc_trim(0)`` gave back 1.9 MiB, in ~20 us.
``trim_native_heap`` is that call: the trainer makes it after each publish, inference once a
second from its version installer's loop (with or without a trainer). It also takes back the
high-water marks a burst leaves (a starved trainer's backlog trains in bigger temporaries).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 64 << 10  # setting it also turns the dynamic threshold off
TRIM_THRESHOLD = 256 << 10
ARENA_MAX = 2


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """The C library, looked up once (find_library runs ldconfig)."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("c"))
    except (OSError, TypeError):
        return None


def bound_native_heap() -> bool:
    """Apply the settings above to this process; False where the C library is not glibc."""
    mallopt = getattr(_libc(), "mallopt", None)
    if mallopt is None:
        return False
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)


def trim_native_heap() -> bool:
    """Give the free pages of every malloc arena back to the OS (glibc ``malloc_trim(0)``:
    the free top and the whole pages inside free chunks); False where the C library is not
    glibc."""
    trim = getattr(_libc(), "malloc_trim", None)
    if trim is None:
        return False
    trim(0)
    return True
