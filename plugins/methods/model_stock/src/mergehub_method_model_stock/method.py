"""Model Stock (Jang et al. 2024): Y = t·mean(Xᵢ) + (1 − t)·B with t = N·cosθ / (1 + (N − 1)·cosθ).

cosθ is the mean cosine between every pair of task vectors Xᵢ − B, over the whole
tensor or, with ``filter_wise``, per row. Where 1 + (N − 1)·cosθ is within 1e-6 of
zero there is no finite ratio and the base is kept (t = 0), as mergekit 0.1.5 does.
Computed in the inputs' dtype, like mergekit.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import split_base
from mergehub.tensormath import as_vectors, mean_pairwise_cosine


def merge(inputs: MergeInputs) -> torch.Tensor:
    base, others, _ = split_base(inputs)
    per_row = inputs.shared["filter_wise"]
    b = as_vectors(base, per_row)
    xs = [as_vectors(x, per_row) for x in others]
    n = len(xs)
    cos = mean_pairwise_cosine([x - b for x in xs]).unsqueeze(-1)  # one per vector, broadcast along it
    denominator = 1 + (n - 1) * cos
    singular = denominator.abs() < 1e-6
    t = torch.where(singular, torch.zeros_like(cos), n * cos / torch.where(singular, torch.ones_like(cos), denominator))
    average = sum(xs) / n
    return (t * average + (1 - t) * b).reshape(base.shape)
