# The C extension dlrm_core/_training_kernel.c: pointers are tensors' data_ptr(), checked by the
# Python callers (live_group.LiveGroup, trainer.FullSparseTrainer).
# pos, hit, index, offsets pointers, nnz, keys, rows of A, tables, batch, rank, dim, scale
BagsSpec = tuple[int, int, int, int, int, int, int, int, int, int, int, float]
# weight, state (0: SGD) pointers, rows, offsets pointer, first value, nnz, first key, last key,
# key shift
TableSpec = tuple[int, int, int, int, int, int, int, int, int]

def lora_forward(bags: BagsSpec, a: int, b: int, delta: int, sums: int) -> None: ...
def lora_backward(
    bags: BagsSpec,
    b: int,
    grad: int,
    stride_t: int,
    stride_b: int,
    sums: int,
    row_grad: int,
    b_grad: int,
    grams: int,
) -> bool: ...
def lora_step(
    bags: BagsSpec,
    a: int,
    accum: int,
    row_grad: int,
    lr_a: float,
    eps_a: float,
    b: int,
    b_grad: int,
    m: int,
    v: int,
    steps: tuple[int, ...],
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
