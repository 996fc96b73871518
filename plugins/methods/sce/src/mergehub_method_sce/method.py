"""SCE: select the entries where the task vectors vary most, calculate each model's weight from
its task vector's energy, erase the entries whose sign disagrees, and average the rest.

    Tᵢ = Xᵢ − B;  when select_topk < 1, keep in every Tᵢ only the ⌊select_topk·#(v ≠ 0)⌋ entries
    of largest population variance v across the models
    cᵢ = mean(Tᵢ²) / Σⱼ mean(Tⱼ²)   (1/N when the sum is below 1e-6)
    mᵢ = sign agreement of Tᵢ with sign(Σⱼ Tⱼ)
    Y  = B + Σ cᵢ·mᵢ·Tᵢ / max(Σ cᵢ·mᵢ, 1e-6)

Computed in the inputs' dtype, as mergekit does.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import sign_agreement, split_base


def merge(inputs: MergeInputs) -> torch.Tensor:
    base, others, _ = split_base(inputs)
    if not others:
        return base
    deltas = torch.stack([t - base for t in others])
    if inputs.shared["select_topk"] < 1:
        deltas = deltas * select_by_variance(deltas, inputs.shared["select_topk"])
    agree = sign_agreement(deltas, "sum", inputs.shared["int8_mask"])
    energy = deltas.square().reshape(len(others), -1).mean(dim=1)
    total = energy.sum().item()
    coefficients = energy / total if abs(total) >= 1e-6 else torch.ones_like(energy) / len(others)
    kept = coefficients.view(-1, *([1] * (deltas.dim() - 1))) * agree
    return base + (deltas * kept).sum(dim=0) / kept.sum(dim=0).clamp(min=1e-6)


def select_by_variance(deltas: torch.Tensor, fraction: float) -> torch.Tensor:
    """Mask (one per entry, shared by all models) of the entries whose variance across models is largest."""
    mask = torch.zeros(deltas.shape[1:], dtype=torch.bool, device=deltas.device)
    if fraction <= 0:
        return mask
    variance = torch.var(deltas, dim=0, unbiased=False)
    k = int(torch.count_nonzero(variance) * fraction)  # counted as mergekit does (a float32 product, truncated)
    if k > 0:
        mask.view(-1)[torch.topk(variance.view(-1), k).indices] = True  # topk's choice among ties, as mergekit
    return mask
