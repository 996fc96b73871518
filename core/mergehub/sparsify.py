"""Sparsifiers for task vectors: which entries of a delta survive.

Shared by the task-vector methods (TIES, DARE, breadcrumbs, DELLA). Each returns a
tensor of the input's shape and dtype with dropped entries set to zero; none
rescales (the L1 rescale is applied by the caller, see :func:`rescale_l1`). Which of
several exactly equal magnitudes survives at a cut-off is implementation-defined,
as in mergekit.
"""

from __future__ import annotations

import math

import torch


def keep_top_k(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask with exactly ``k`` of the largest entries of ``magnitude`` (flattened) set."""
    flat = magnitude.reshape(-1)
    n = flat.numel()
    if k <= 0:
        return torch.zeros_like(flat, dtype=torch.bool).reshape(magnitude.shape)
    if k >= n:
        return torch.ones_like(flat, dtype=torch.bool).reshape(magnitude.shape)
    threshold = torch.kthvalue(flat, n - k + 1).values  # the k-th largest value
    mask = flat > threshold
    ties = (flat == threshold).nonzero().reshape(-1)
    mask[ties[: k - int(mask.sum())]] = True
    return mask.reshape(magnitude.shape)


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming: keep the ``max(1, ⌊density·n⌋)`` entries of largest magnitude."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    k = max(1, math.floor(density * delta.numel()))
    return delta * keep_top_k(delta.abs().float(), k)


def random(delta: torch.Tensor, density: float, generator: torch.Generator | None) -> torch.Tensor:
    """DARE: keep each entry independently with probability ``density``.

    float16 is sampled in float32 on CPU, bfloat16 natively (mergekit's rule).
    """
    if density >= 1:
        return delta
    work = torch.float32 if delta.dtype == torch.float16 and delta.device.type == "cpu" else delta.dtype
    keep = torch.bernoulli(torch.full(delta.shape, density, dtype=work, device=delta.device), generator=generator)
    return (delta.to(work) * keep).to(delta.dtype)


def magnitude_outliers(delta: torch.Tensor, density: float, gamma: float) -> torch.Tensor:
    """Breadcrumbs: drop the ``⌊gamma·n⌋`` largest magnitudes and the smallest ones, keeping ``⌊density·n⌋``.

    When ``gamma > 1 - density``, fewer outliers are dropped so that density is still met.
    """
    if density >= 1:
        return delta
    n = delta.numel()
    target = math.floor(density * n)
    n_top = math.floor(gamma * n)
    n_bottom = max(0, n - target - n_top)
    order = torch.argsort(delta.abs().reshape(-1).float())
    mask = torch.zeros(n, dtype=torch.bool, device=delta.device)
    mask[order[n_bottom : n_bottom + target]] = True
    return delta * mask.reshape(delta.shape)


def della_magprune(delta: torch.Tensor, density: float, epsilon: float, generator: torch.Generator | None) -> torch.Tensor:
    """DELLA: per row, keep probability rises linearly with magnitude rank from density−ε to density+ε."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    problem = check_della(density, epsilon)
    if problem:
        raise ValueError(problem)
    rows = delta.reshape(1, -1) if delta.dim() <= 1 else delta
    ranks = torch.argsort(torch.argsort(rows.abs().float(), dim=-1), dim=-1).float()  # 0 .. n-1 per row
    width = rows.shape[-1] - 1
    position = ranks / width if width > 0 else torch.zeros_like(ranks)
    probability = (density - epsilon) + 2 * epsilon * position
    keep = torch.bernoulli(probability, generator=generator).to(delta.dtype)
    return (rows * keep).reshape(delta.shape)


def check_della(density: float, epsilon: float) -> str | None:
    """Why (density, epsilon) cannot work, or None."""
    if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        return (f"density ± epsilon must lie strictly between 0 and 1, but density {density} with epsilon {epsilon} "
                f"gives [{density - epsilon:g}, {density + epsilon:g}]")
    return None


def rescale_l1(original: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """Scale ``sparse`` so that its L1 norm equals the original's (skipped when either is ~0)."""
    before = original.abs().sum()
    after = sparse.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return sparse
    return sparse * (before / after)
