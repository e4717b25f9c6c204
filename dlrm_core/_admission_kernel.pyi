# The C extension dlrm_core/_admission_kernel.c: pointers are tensors' data_ptr(), checked by the
# Python callers (group_layout.LiveGroups, admission.SightingSketch).
from dlrm_core._serving_kernel import IndexSpec

# counters pointer, bits, since_reset pointer, multipliers
SketchSpec = tuple[int, int, int, tuple[int, int]]
# keys, A, last_used, accum pointers (the region's first row), rank, start, capacity, key offset,
# base rows
RegionSpec = tuple[int, int, int, int, int, int, int, int, int]
# region, index, sketch, admit_after, active rows, stamp
TableSpec = tuple[RegionSpec, IndexSpec, SketchSpec | None, int, int, float]

def admit(
    tables: tuple[TableSpec, ...],
    keys: int,
    counts: int,
    bounds: int,
    n_keys: int,
    pos: int,
    hit: int,
    status: int,
    lookups_only: bool,
) -> None: ...
def sight(sketch: SketchSpec, ids: int, counts: int, k: int, estimate: int) -> None: ...

# values pointer, nnz, offsets pointer, key offset, rows
MemberSpec = tuple[int, int, int, int, int]

def batch_keys(
    members: tuple[MemberSpec, ...],
    batch: int,
    uniq: int,
    inverse: int,
    counts: int,
    offsets: int,
    bounds: int,
) -> int: ...
def argsort(keys: int, n: int, sorted: int, order: int) -> None: ...
def active_rows(index: IndexSpec, ids: int, n: int, out_ids: int, out_rows: int) -> int: ...
def evict(
    index: IndexSpec,
    keys: int,
    a: int,
    last_used: int,
    accum: int,
    rank: int,
    n: int,
    rows: int,
    k: int,
) -> bool: ...
def lru(
    index: IndexSpec,
    last_used: int,
    n: int,
    elapsed: float,
    min_age: float,
    protect: int,
    p: int,
    count: int,
    out: int,
) -> int: ...
