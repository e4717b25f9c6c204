# The C extension dlrm_core/_training_kernel.c: pointers are tensors' data_ptr(), checked by the
# Python callers (live_group.Correction, trainer.FullSparseTrainer).
# pos, hit, index, offsets, features pointers, nnz, keys, members, batch, dim, n_features
BatchSpec = tuple[int, int, int, int, int, int, int, int, int, int, int]
# key0, key1, member0, member1, row0, rows, rank, scale, a, b, b_m, b_v pointers
GroupSpec = tuple[int, int, int, int, int, int, int, float, int, int, int, int]
# weight, state (0: SGD) pointers, rows, offsets pointer, first value, nnz, first key, last key,
# key shift
TableSpec = tuple[int, int, int, int, int, int, int, int, int]

def all_finite(x: int, n: int) -> bool: ...
def lora_forward(
    batch: BatchSpec, groups: tuple[GroupSpec, ...], out: int, sums: int, sums_size: int
) -> None: ...
def lora_backward(
    batch: BatchSpec,
    groups: tuple[GroupSpec, ...],
    grad: int,
    sums: int,
    row_grad: int,
    b_grad: int,
    grams: int,
    sizes: tuple[int, int, int],
) -> bool: ...
def lora_step(
    batch: BatchSpec,
    groups: tuple[GroupSpec, ...],
    accum: int,
    accum_size: int,
    row_grad: int,
    b_grad: int,
    sizes: tuple[int, int],
    grams: int,
    steps: tuple[int, ...],
    observers: tuple[int, ...],
    lr_a: float,
    eps_a: float,
    lr_b: float,
    beta1: float,
    beta2: float,
    eps_b: float,
) -> None: ...
def sparse_step(
    tables: tuple[TableSpec, ...],
    keys: int,
    n_keys: int,
    inverse: int,
    grad: int,
    batch: int,
    dim: int,
    lr: float,
    eps: float,
    row_grad: int,
    norms: int,
) -> bool: ...
