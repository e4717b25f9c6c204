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
"""

from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8
MMAP_THRESHOLD = 64 << 10  # setting it also turns the dynamic threshold off
TRIM_THRESHOLD = 256 << 10
ARENA_MAX = 2


def bound_native_heap() -> bool:
    """Apply the settings above to this process; False where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    settings = (
        (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
        (_M_ARENA_MAX, ARENA_MAX),
    )
    return all(mallopt(param, value) == 1 for param, value in settings)
