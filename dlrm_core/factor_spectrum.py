"""The spectral math of a low-rank correction A B, for the rank controller (rank.py).

The SVD of A B comes from QR of B^T (D, r) and the eigenvectors of the r x r Gram matrix of A's
rows in that basis (accumulated in float64: one pass over A, no QR of the tall A), never forming
the (n, D) product; truncating it to its top-k directions gives the re-factored A, B (B with
orthonormal rows) and what the truncation loses, factored. Bases are extended by the residual
gradient direction, then random ones. eigh's and svd's signs are arbitrary: canonical ones
(sign_flips) make two runs on nearly equal inputs (the fused trainer's sums and the per-table
ones) agree on B, not just on A B.

Shapes: n active rows, r rank, D dim, k kept directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

Svd = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
ADD_CHUNK = 16384  # rows per product in FactoredRows.add_to: a (chunk, D) block stays in cache


@dataclass(frozen=True)
class FactoredRows:
    """(n, D) rows kept factored as coeffs (n, j) @ dirs (j, D), never formed whole: what a
    re-factoring takes out of A B (j << D, so a row's norm costs O(j^2), not O(D))."""

    coeffs: torch.Tensor  # (n, j)
    dirs: torch.Tensor  # (j, D)

    def row_norms(self) -> torch.Tensor:
        """(n,) L2 norm of each row, from the (j, j) Gram of dirs."""
        gram = self.dirs @ self.dirs.T
        return ((self.coeffs @ gram) * self.coeffs).sum(1).clamp_(min=0).sqrt_()

    def add_to(
        self, weight: torch.Tensor, rows: torch.Tensor, targets: torch.Tensor, scale: float
    ) -> None:
        """weight[targets] += scale * these ``rows`` (k,), a cache-sized block at a time."""
        for start in range(0, rows.numel(), ADD_CHUNK):
            block = self.coeffs[rows[start : start + ADD_CHUNK]] @ self.dirs
            weight.index_add_(0, targets[start : start + ADD_CHUNK], block.mul_(scale))


def factor_svd(a: torch.Tensor, b: torch.Tensor) -> Svd:
    """A B = coords dirs^T for A (n, r), B (r, D): (coords (n, r), s (r,), dirs (D, r)), the
    singular values s descending, dirs orthonormal directions in embedding space with canonical
    signs and coords each row's coordinates along them (column j has norm s[j])."""
    qb, rb = torch.linalg.qr(b.T)  # (D, r), (r, r)
    c = a @ rb.T  # (n, r): A B = c qb^T, qb orthonormal
    c64 = c.double()
    evals, v = torch.linalg.eigh(c64.T @ c64)  # ascending; exact sums of float32 products
    v = v.flip(1)
    s = evals.flip(0).clamp(min=0).sqrt().to(a.dtype)
    dirs = qb @ v.to(a.dtype)  # (D, r)
    flip = sign_flips(dirs)  # both factors' columns, so the product stays
    return c @ (v.to(a.dtype) * flip), s, dirs * flip


def truncate(
    a: torch.Tensor, b: torch.Tensor, k: int, svd: Svd | None = None
) -> tuple[torch.Tensor, torch.Tensor, FactoredRows | None]:
    """(A' (n, m), basis (D, m), lost) with m = min(k, r): A B's top-m components as
    A' basis^T, and the truncated rest, factored (None when nothing is cut). ``svd``:
    factor_svd(a, b) when the caller has it already."""
    coords, s, dirs = factor_svd(a, b) if svd is None else svd
    m = min(k, s.numel())
    lost = FactoredRows(coords[:, m:], dirs[:, m:].T) if m < s.numel() else None
    return coords[:, :m].contiguous(), dirs[:, :m], lost


def energy_rank(energy: torch.Tensor, tau: float) -> int:
    """The fewest leading entries of ``energy`` (descending, >= 0) carrying ``tau`` of their
    sum; 0 when the sum is 0."""
    total = float(energy.sum())
    if total <= 0:
        return 0
    share = torch.cumsum(energy, 0) / total
    return int(torch.searchsorted(share, torch.tensor([tau - 1e-7]))) + 1


def onto_basis(
    a: torch.Tensor, b: torch.Tensor, basis: torch.Tensor
) -> tuple[torch.Tensor, FactoredRows]:
    """(A' (n, k), lost): A B projected onto the orthonormal ``basis`` (D, k) as A' basis^T,
    and what the projection loses, factored."""
    b_basis = b @ basis  # (r, k): A B basis = A b_basis
    return a @ b_basis, FactoredRows(a, b - b_basis @ basis.T)


def residual_gram(b: torch.Tensor, gram: torch.Tensor) -> torch.Tensor:
    """(D, D) ``gram`` projected outside span(B) for B (r, D)."""
    q, _ = torch.linalg.qr(b.T)  # (D, r) orthonormal basis of span(B)
    perp = torch.eye(b.shape[1]) - q @ q.T
    return perp @ gram @ perp


def top_eigenvectors(gram: torch.Tensor, k: int) -> torch.Tensor:
    """(D, k) eigenvectors of the symmetric (D, D) ``gram`` with the k largest eigenvalues,
    largest first, with canonical signs."""
    return signed(torch.linalg.eigh(gram).eigenvectors.flip(1)[:, :k])


def extend_basis(
    basis: torch.Tensor, extra: int, first: torch.Tensor, gen: torch.Generator
) -> torch.Tensor:
    """(D, m) orthonormal -> (D, m + extra) orthonormal: ``first`` (D,) if it leaves the span,
    then random directions from ``gen``."""
    d, want = basis.shape[0], basis.shape[1] + extra
    candidate, out = first, basis
    for _ in range(want + 100):  # random vectors leave the span almost surely
        if out.shape[1] == want:
            return out
        v = candidate - out @ (out.T @ candidate)
        if float(v.norm()) > 1e-4:
            out = torch.cat([out, (v / v.norm()).unsqueeze(1)], dim=1)
        candidate = torch.randn(d, generator=gen)
    raise RuntimeError(f"could not extend a ({d}, {basis.shape[1]}) basis by {extra}")


def sign_flips(vectors: torch.Tensor) -> torch.Tensor:
    """(k,) +-1 that make each column of the (D, k) ``vectors`` have its largest-magnitude entry
    positive."""
    pivot = vectors.gather(0, vectors.abs().argmax(0, keepdim=True)).squeeze(0)
    return torch.where(pivot < 0, -1.0, 1.0)


def signed(vectors: torch.Tensor) -> torch.Tensor:
    """``vectors`` with the signs of sign_flips."""
    return vectors * sign_flips(vectors)
