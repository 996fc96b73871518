"""Sign consensus and weighted sums of task vectors, with arithmetic kernels only.

The obvious formulation (stack the deltas, compare signs with ``==``, select with
``torch.where``) spends most of a TIES or DARE merge in comparison and selection kernels,
which on the CPU cost 3–15× an addition. Here every step is an addition, multiplication,
``sign`` or ``relu``, in the inputs' dtype, rounding at exactly the points the reference
rounds (each weighted delta, the elected sum, the kept sum, the kept weight), so the bytes are
the same as those of the obvious formulation.
"""

from __future__ import annotations

from itertools import combinations

import torch


def weighted(deltas: list[torch.Tensor], weights: list[float]) -> list[torch.Tensor]:
    """Dᵢ = wᵢ·dᵢ, the weight first rounded to the deltas' dtype (as a tensor of that dtype would be)."""
    return [d * torch.tensor(w, dtype=d.dtype) for d, w in zip(deltas, weights)]


def total(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Σ tensors, accumulated in float32 and rounded once, as ``torch.stack(...).sum(0)`` does."""
    if len(tensors) == 1:
        return tensors[0].clone()
    if len(tensors) == 2:  # one rounding either way
        return tensors[0] + tensors[1]
    return torch.stack(tensors).sum(dim=0)


def agreement(weighted_deltas: list[torch.Tensor]) -> list[torch.Tensor]:
    """1 where Dᵢ has the sign of Σⱼ Dⱼ (a zero sum elects +), else 0; zeros never agree.

    ``sign(sign(s) + ½)`` is the elected sign without a comparison; ``relu(sign(Dᵢ·e))`` is 1
    exactly when Dᵢ is non-zero and has the elected sign.
    """
    elected = total(weighted_deltas).sign_().add_(0.5).sign_()
    return [torch.mul(d, elected).sign_().relu_() for d in weighted_deltas]


def subset_sums_to_zero(weights: list[float], dtype: torch.dtype) -> bool:
    """Whether some non-empty set of the weights (rounded to ``dtype``) adds up to 0."""
    rounded = [float(torch.tensor(w, dtype=dtype)) for w in weights]
    if len(rounded) > 12:  # too many sets to try: assume the worst
        return True
    return any(float(total([torch.tensor(v, dtype=dtype) for v in subset])) == 0
               for size in range(1, len(rounded) + 1) for subset in combinations(rounded, size))


def consensus_sum(weighted_deltas: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """Σ of the agreeing Dᵢ, divided (when ``normalize``) by Σ of their weights (0 → 1).

    Consumes ``weighted_deltas`` (they are overwritten to save memory).
    """
    dtype = weighted_deltas[0].dtype
    agree = agreement(weighted_deltas)
    mixed = total([d.mul_(a) for d, a in zip(weighted_deltas, agree)])  # Dᵢ is not needed afterwards
    if not normalize:
        return mixed
    divisor = total([a.mul_(torch.tensor(w, dtype=dtype)) for a, w in zip(agree, weights)])
    if subset_sums_to_zero(weights, dtype):  # a zero divisor may come with a non-zero sum: divide by 1 there
        return mixed.div_(divisor.masked_fill_(divisor == 0, 1))
    # Otherwise the divisor is 0 only where nothing agrees, so the sum is 0 too and 0/0 → 0 is the same.
    return mixed.div_(divisor).nan_to_num_(nan=0.0, posinf=float("inf"), neginf=float("-inf"))


def plain_sum(weighted_deltas: list[torch.Tensor], weights: list[float], normalize: bool) -> torch.Tensor:
    """Σ Dᵢ, divided (when ``normalize``) by Σ wᵢ, or by 1 when that is within 1e-8 of 0.

    The 1e-8 is compared in the deltas' dtype, where float16 rounds it to 0: a float16 weight
    sum of exactly 0 therefore divides by 0, as the reference does.
    """
    mixed = total(weighted_deltas)
    if normalize:
        divisor = float(total([torch.tensor(w, dtype=mixed.dtype) for w in weights]))
        if abs(divisor) >= float(torch.tensor(1e-8, dtype=mixed.dtype)):
            mixed = mixed / torch.tensor(divisor, dtype=mixed.dtype)
    return mixed
