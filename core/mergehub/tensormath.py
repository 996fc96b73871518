"""Tensor maths shared by method plugins, written once so every plugin agrees."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs; float64 stays float64 (mergekit's linear/slerp rule)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def weighted_sum(tensors: Sequence[torch.Tensor], weights: Sequence[float], dtype: torch.dtype) -> torch.Tensor:
    """Σ wᵢ·tᵢ accumulated in ``dtype`` without materialising a stacked copy of the inputs."""
    result = torch.zeros(tensors[0].shape, dtype=dtype, device=tensors[0].device)
    for tensor, weight in zip(tensors, weights):
        result.add_(tensor.to(dtype), alpha=weight)
    return result
