import pytest
import torch

from dlrm_core.interaction import (
    dot_interaction,
    kernel_backward,
    pair_index,
    torch_interaction,
    uses_kernel,
)
from dlrm_core.kernel import interaction_kernel
from dlrm_core.model import InteractionArch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def inputs(batch: int, features: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, dim, generator=gen).requires_grad_(True)
    sparse = torch.randn(batch, features, dim, generator=gen).requires_grad_(True)
    return dense, sparse


def forward_backward(fn, dense, sparse, grad):
    dense, sparse = dense.detach().requires_grad_(True), sparse.detach().requires_grad_(True)
    out = fn(dense, sparse)
    out.backward(grad)
    return out.detach(), dense.grad, sparse.grad


@pytest.mark.parametrize("batch", [1, 3, 64])
@pytest.mark.parametrize("features", [1, 2, 3, 7, 8, 9, 15, 16, 17, 26, 27])
@pytest.mark.parametrize("dim", [1, 5, 8, 16, 20, 24, 32, 33])
def test_kernel_matches_the_torch_ops(batch, features, dim):
    """Output and both inputs' gradients, on random shapes (tails of every vector width)."""
    dense, sparse = inputs(batch, features, dim, seed=batch * 1000 + features * 10 + dim)
    pairs = pair_index(features)
    grad = torch.randn(batch, dim + (features + 1) * features // 2)
    assert uses_kernel(dense, sparse)
    got = forward_backward(lambda d, s: dot_interaction(d, s, pairs), dense, sparse, grad)
    want = forward_backward(lambda d, s: torch_interaction(d, s, pairs), dense, sparse, grad)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("features", [1, 3, 4, 8, 26])
def test_skipping_dense_gradient_leaves_the_sparse_one_bit_for_bit(features):
    """A kept bottom output (no grad) takes the backward without dense's row: the sparse rows'
    sums are the same bits, whatever tiles they fall in."""
    dense, sparse = inputs(7, features, 16, seed=features)
    grad = torch.randn(7, 16 + (features + 1) * features // 2)
    grad_dense, full = kernel_backward(dense.detach(), sparse.detach(), grad)
    none, skipped = kernel_backward(dense.detach(), sparse.detach(), grad, dense_grad=False)
    assert grad_dense is not None and none is None
    assert torch.equal(skipped, full)
    frozen = dense.detach()  # autograd asks the kernel for dense's gradient only when needed
    dot_interaction(frozen, sparse, pair_index(features)).backward(grad)
    assert frozen.grad is None and torch.equal(sparse.grad, full)


def _pair_matrix(grad: torch.Tensor, features: int, dim: int) -> torch.Tensor:
    """The pairs' gradients (B, D + P) as the symmetric (B, F + 1, F + 1) matrix."""
    n = features + 1
    full = torch.zeros(grad.shape[0], n * n)
    full[:, pair_index(features)] = grad[:, dim:]
    full = full.view(-1, n, n)
    return full + full.transpose(1, 2)


@pytest.mark.parametrize(("features", "dim"), [(1, 8), (2, 16), (8, 16), (15, 32), (5, 24)])
def test_small_samples_backward_has_the_tiled_paths_bits(features, dim):
    """Up to 16 rows of 8-32 dims take the in-place path: its sums run over j in the tiled
    path's order, so its gradients are the tiled path's bits. The tiled path runs on the same
    sample with zero-padded rows past 16 (a zero row and zero pair gradients add +0 last)."""
    dense, sparse = (t.detach() for t in inputs(9, features, dim, seed=features))
    grad = torch.randn(9, dim + (features + 1) * features // 2)
    small_dense, small = kernel_backward(dense, sparse, grad)
    wide = 17 - features  # features + wide = 17 > 16 rows: the tiled path
    padded = torch.cat([sparse, torch.zeros(9, wide, dim)], dim=1)
    matrix = torch.zeros(9, 18, 18)
    matrix[:, : features + 1, : features + 1] = _pair_matrix(grad, features, dim)
    padded_grad = torch.cat(
        [grad[:, :dim], matrix.flatten(1)[:, pair_index(features + wide)]], dim=1
    )
    tiled_dense, tiled = kernel_backward(dense, padded, padded_grad)
    assert small_dense is not None and tiled_dense is not None
    assert torch.equal(small_dense, tiled_dense) and torch.equal(small, tiled[:, :features])


def test_module_runs_the_kernel_and_keeps_the_layout():
    """[dense, d.s1, d.s2, s1.s2] through the autograd function, and its backward."""
    dense = torch.tensor([[1.0, 0.0]], requires_grad=True)
    sparse = torch.tensor([[[2.0, 0.0], [0.0, 3.0]]], requires_grad=True)
    out = InteractionArch(2)(dense, sparse)
    assert out.tolist() == [[1.0, 0.0, 2.0, 0.0, 0.0]]
    assert out.grad_fn is not None and "KernelInteraction" in type(out.grad_fn).__name__
    out.backward(torch.tensor([[1.0, 1.0, 1.0, 1.0, 1.0]]))
    # d/d dense: the copy (1, 1) + s1 + s2; d/d s1: dense + s2; d/d s2: dense + s1
    assert dense.grad.tolist() == [[3.0, 4.0]]
    assert sparse.grad.tolist() == [[[1.0, 3.0], [3.0, 0.0]]]


def test_non_contiguous_inputs_and_an_empty_batch():
    dense, sparse = inputs(6, 4, 8, seed=3)
    pairs = pair_index(4)
    view = sparse.detach().transpose(0, 1).contiguous().transpose(0, 1)  # same values, strided
    assert not view.is_contiguous()
    torch.testing.assert_close(
        dot_interaction(dense, view, pairs), torch_interaction(dense, sparse, pairs)
    )
    empty = dot_interaction(torch.zeros(0, 8), torch.zeros(0, 4, 8), pairs)
    assert empty.shape == (0, 8 + 10)


def test_float64_takes_the_torch_ops():
    dense, sparse = (t.detach().double().requires_grad_(True) for t in inputs(4, 3, 5, seed=4))
    assert not uses_kernel(dense, sparse)
    out = dot_interaction(dense, sparse, pair_index(3))
    assert out.dtype == torch.float64
    assert torch.autograd.gradcheck(
        lambda d, s: dot_interaction(d, s, pair_index(3)), (dense, sparse)
    )


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="differ"):
        dot_interaction(torch.zeros(2, 4), torch.zeros(3, 5, 4), pair_index(5))
    with pytest.raises(ValueError, match="features"):
        interaction_kernel.forward(0, 0, 0, 1, 0, 4)
    with pytest.raises(ValueError, match="dim"):
        interaction_kernel.backward(0, 0, 0, 0, 0, 1, 3, 0)


def test_a_second_derivative_is_refused_not_wrong():
    dense, sparse = inputs(2, 3, 4, seed=5)
    out = dot_interaction(dense, sparse, pair_index(3))
    (grad,) = torch.autograd.grad(out.pow(2).sum(), sparse, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        grad.sum().backward()
