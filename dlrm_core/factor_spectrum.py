"""The spectral math of a low-rank correction A B, for the rank controller (rank.py).

The SVD of A B comes from QR of A (n, r) and of B^T (D, r) and the SVD of the small core, never
forming the (n, D) product; truncating it to its top-k directions gives the re-factored A, B (B
with orthonormal rows) and what the truncation loses. Bases are extended by the residual
gradient direction, then random ones. eigh's and svd's signs are arbitrary: canonical ones
(sign_flips) make two runs on nearly equal inputs (the fused trainer's sums and the per-table
ones) agree on B, not just on A B.

Shapes: n active rows, r rank, D dim, k kept directions, m = min(n, r).
"""

from __future__ import annotations

import torch


def factor_svd(
    a: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A B = (qa u) diag(s) dirs^T for A (n, r), B (r, D); qa (n, m), u (m, m'), s (m',),
    dirs (D, m') orthonormal directions in embedding space, with canonical signs."""
    qa, ra = torch.linalg.qr(a)  # (n, m), (m, r)
    qb, rb = torch.linalg.qr(b.T)  # (D, r), (r, r)
    u, s, vh = torch.linalg.svd(ra @ rb.T, full_matrices=False)  # core (m, r)
    dirs = qb @ vh.T  # (D, m')
    flip = sign_flips(dirs)  # both factors' columns, so the product stays
    return qa, u * flip, s, dirs * flip


def truncate(
    a: torch.Tensor, b: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(A' (n, m), basis (D, m), lost) with m = min(k, rank of the SVD): A B's top-m
    components as A' basis^T, and the (n, D) truncated rest (None when nothing is cut)."""
    qa, u, s, dirs = factor_svd(a, b)
    m = min(k, s.numel())
    kept = (qa @ u[:, :m]) * s[:m]
    lost = ((qa @ u[:, m:]) * s[m:]) @ dirs[:, m:].T if m < s.numel() else None
    return kept, dirs[:, :m], lost


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
