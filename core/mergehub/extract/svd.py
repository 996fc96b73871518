"""The truncated SVD of one delta, the rank it keeps, and how far the factors are from the delta.

``U, S, Vᴴ = svd(ΔW)`` in float32 (as mergekit-extract-lora does); the first ``r`` triplets give
``A = √S Vᴴ`` and ``B = U √S`` (``--distribute-scale``, the default) or ``A = S Vᴴ`` and ``B = U``, cast to the
delta's dtype, so that PEFT's ``W + B A`` (scale ``alpha / r = 1``) rebuilds the fine-tune. By Eckart–Young no
rank-``r`` pair does better: the relative error is ``sqrt(Σ_{i>r} σᵢ²) / ‖ΔW‖_F``; the error reported is the one
of the factors as written (after the cast), measured in row blocks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Factors:
    a: torch.Tensor  # (r, in)
    b: torch.Tensor  # (out, r)
    norm: float  # ‖ΔW‖_F
    error: float  # ‖ΔW − B A‖_F / ‖ΔW‖_F, 0 for ΔW = 0


def choose_rank(singular: torch.Tensor, cap: int, energy: float | None = None, epsilon: float = 0.0) -> int:
    """The rank a module keeps: at most ``cap``; with ``energy``, the smallest keeping that share of Σσ²;
    with ``epsilon``, only singular values above it. 0 when nothing is left (a zero delta under these rules)."""
    rank = min(cap, singular.numel())
    if epsilon > 0:
        rank = min(rank, int((singular > epsilon).sum().item()))
    if energy is not None:
        squares = singular.double().square().cumsum(0)
        total = squares[-1].item() if squares.numel() else 0.0
        needed = 0 if total == 0 else int((squares < energy * total).sum().item()) + 1
        rank = min(rank, needed, singular.numel())
    return rank


def singular_values(delta: torch.Tensor) -> torch.Tensor:
    """σ of ``delta`` (float32), largest first: what a data-dependent rank is decided from."""
    return torch.linalg.svdvals(delta.float())


def factorise(delta: torch.Tensor, rank: int, dtype: torch.dtype, distribute_scale: bool = True,
              block_rows: int = 4096) -> Factors:
    """``delta`` (float32, 2-D) as rank-``rank`` factors in ``dtype``. ``delta`` is overwritten: it ends as the
    residual ``ΔW − B A``, which is how the error is measured without a second matrix of that size."""
    norm = _frobenius(delta, block_rows)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    rank = min(rank, s.numel())
    if distribute_scale:
        root = s[:rank].sqrt()
        a, b = root[:, None] * vh[:rank], u[:, :rank] * root[None, :]
    else:
        a, b = s[:rank, None] * vh[:rank], u[:, :rank].clone()
    del u, s, vh
    a, b = a.to(dtype), b.to(dtype)
    a32 = a.float()
    for start in range(0, delta.shape[0], block_rows):
        stop = min(delta.shape[0], start + block_rows)
        delta[start:stop] -= b[start:stop].float() @ a32
    residual = _frobenius(delta, block_rows)
    return Factors(a.cpu(), b.cpu(), norm, residual / norm if norm > 0 else 0.0)


def optimal_error(singular: torch.Tensor, rank: int) -> float:
    """Eckart–Young: the least relative error of any rank-``rank`` approximation (0 for a zero delta)."""
    squares = singular.double().square()
    total = squares.sum().item()
    return math.sqrt(squares[rank:].sum().item() / total) if total > 0 else 0.0


def _frobenius(matrix: torch.Tensor, block_rows: int) -> float:
    total = 0.0
    for start in range(0, matrix.shape[0], block_rows):
        total += matrix[start:start + block_rows].double().square().sum().item()
    return math.sqrt(total)
