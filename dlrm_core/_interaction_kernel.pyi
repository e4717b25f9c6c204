# The C extension dlrm_core/_interaction_kernel.c: pointers are tensors' data_ptr(), checked by
# the Python caller (model.InteractionArch).

def forward(dense: int, sparse: int, out: int, batch: int, features: int, dim: int) -> None: ...
def backward(
    dense: int,
    sparse: int,
    grad: int,
    grad_dense: int,  # 0: not computed
    grad_sparse: int,
    batch: int,
    features: int,
    dim: int,
) -> None: ...
