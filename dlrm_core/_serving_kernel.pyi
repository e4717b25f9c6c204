# The C extension dlrm_core/_serving_kernel.c: pointers are tensors' data_ptr(), checked by the
# Python callers (serving.RankGroup, hash_index.CuckooIndex).
# slots pointer, bits, key width, multipliers
IndexSpec = tuple[int, int, int, tuple[int, int]]
Bag = tuple[int, int, int, int, int]  # values pointer, nnz, offsets pointer, feature, key offset

def build(index: IndexSpec, keys: int, n: int) -> bool: ...
def lookup(index: IndexSpec, queries: int, n: int, out: int) -> None: ...
def assign(index: IndexSpec, keys: int, rows: int, n: int) -> int: ...
def unassign(index: IndexSpec, keys: int, n: int) -> int: ...
def add_bags(
    index: IndexSpec,
    a: int,
    rank: int,
    b: int,
    pooled: int,
    batch: int,
    num_features: int,
    dim: int,
    bags: tuple[Bag, ...],
) -> None: ...
def pool_bags(
    tables: tuple[tuple[int, int, int, int, int], ...], batch: int, dim: int, pooled: int
) -> int: ...
