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


def softmax_kl(p_logits: torch.Tensor, q_logits: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """KL(p‖q) = Σ p·log(p/q) along the last dim (kept, size 1), p = softmax(p_logits) + eps, q likewise.

    Each step rounds to the inputs' dtype as the out-of-place formula does, but writes over a
    tensor it owns (in-place kernels run about twice as fast as allocating ones).
    """
    p = torch.softmax(p_logits, dim=-1).add_(eps)
    q = torch.softmax(q_logits, dim=-1).add_(eps)
    return torch.div(p, q, out=q).log_().mul_(p).sum(dim=-1, keepdim=True)


def index_quantiles(values: torch.Tensor, qs: Sequence[float], sample_size: int | None = None,
                    generator: torch.Generator | None = None) -> list[torch.Tensor]:
    """Quantiles without interpolation: element ⌊q·(n−1)⌋ of the sorted (flattened) values.

    With more than ``sample_size`` elements, the quantiles are those of ``sample_size``
    values drawn uniformly *with replacement* using ``generator`` (mergekit 0.1.5's
    rule, which bounds the memory of the sort); smaller tensors are deterministic.
    """
    flat = values.reshape(-1)
    if sample_size is not None and flat.numel() > sample_size:
        flat = flat[torch.randint(flat.numel(), (sample_size,), generator=generator, device=flat.device)]
    ordered = torch.sort(flat).values
    last = ordered.numel() - 1
    return [ordered[int(q * last)] for q in qs]
