"""Sparsifiers for task vectors: which entries of a delta survive.

Shared by the task-vector methods (TIES, breadcrumbs). Each returns a tensor of the
input's shape with dropped entries set to zero, in the input's dtype; none rescales by
itself (:func:`rescale_l1`). The random ones (DARE, DELLA) work in blocks and live in
:mod:`mergehub.dropout`; their sampling dtype and DELLA's parameter check are here.
Which of several exactly equal magnitudes survives at a cut-off is implementation-defined;
we use the same unstable sort as mergekit so that bfloat16 recipes, where equal magnitudes
are common, keep the same entries.
"""

from __future__ import annotations

import math

import torch


def keep_top_k(magnitude: torch.Tensor, k: int) -> torch.Tensor:
    """A boolean mask with exactly ``k`` of the largest entries of ``magnitude`` (flattened) set.

    Equal values at the cut-off are chosen by torch's default (unstable) descending
    sort, which is what mergekit uses, so the same entries survive; the choice does
    not depend on the number of threads.
    """
    flat = magnitude.reshape(-1)
    n = flat.numel()
    mask = torch.zeros(n, dtype=torch.bool, device=flat.device)
    if k >= n:
        mask[:] = True
    elif k > 0:
        mask[torch.argsort(flat, descending=True)[:k]] = True
    return mask.reshape(magnitude.shape)


def sampling_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype random masks are drawn and applied in: float32 for float16 on CPU, else the tensor's own."""
    return torch.float32 if tensor.dtype == torch.float16 and tensor.device.type == "cpu" else tensor.dtype


def magnitude(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES trimming: keep the ``max(1, ⌊density·n⌋)`` entries of largest magnitude."""
    if density >= 1:
        return delta
    if density <= 0:
        return torch.zeros_like(delta)
    k = max(1, math.floor(density * delta.numel()))
    return delta * keep_top_k(delta.abs().float(), k)


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


def check_della(density: float, epsilon: float) -> str | None:
    """Why (density, epsilon) cannot work, or None."""
    problem = _della_range_problem(density, epsilon)
    return f"density ± epsilon must lie strictly between 0 and 1, but {problem}" if problem else None


def check_della_params(params: list[dict], shared: dict) -> str | None:
    """The x-mergehub ``check`` of the DELLA methods: :func:`check_della` over every model's resolved parameters.

    Every distinct bad combination is named in the one sentence, not just the first.
    """
    found = [_della_range_problem(p["density"], p["epsilon"]) for p in params if "density" in p and "epsilon" in p]
    problems = list(dict.fromkeys(f for f in found if f))
    return f"density ± epsilon must lie strictly between 0 and 1, but {'; '.join(problems)}" if problems else None


def _della_range_problem(density: float, epsilon: float) -> str | None:
    if 0 < density < 1 and not (0 < density - epsilon and density + epsilon < 1):
        return (f"density {density} with epsilon {epsilon} gives [{density - epsilon:g}, {density + epsilon:g}] "
                f"(with this density, use an epsilon below {min(density, 1 - density):g})")
    return None


def rescale_l1(original: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
    """Scale ``sparse`` so that its L1 norm equals the original's (skipped when either is ~0)."""
    before = original.abs().sum()
    after = sparse.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return sparse
    return sparse * (before / after)
