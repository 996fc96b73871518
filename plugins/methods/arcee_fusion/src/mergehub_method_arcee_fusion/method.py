"""Arcee Fusion: add to the base only the changes whose importance is an outlier.

    importance = |X − B| · KL(softmax(X) ‖ softmax(B))   (KL per row, along the last dim)
    threshold  = median + 1.5·(Q3 − Q1) of the importance (quantiles by index, no interpolation)
    Y = B + (X − B)·[importance ≥ threshold]

Tensors of at most a million elements are deterministic. Above that, the quantiles
come from a million importance values drawn with replacement (mergekit 0.1.5's rule),
using the per-tensor generator so that the same --seed gives the same bytes.
Computed in the inputs' dtype: mergekit matches exactly in float32, and the mask is
sensitive to precision.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.taskarith import split_base
from mergehub.tensormath import index_quantiles, softmax_kl

QUANTILE_SAMPLE_SIZE = 1_000_000


def merge(inputs: MergeInputs) -> torch.Tensor:
    base, (other,), _ = split_base(inputs)
    delta = other - base
    importance = delta.abs() * softmax_kl(other, base)
    q1, median, q3 = index_quantiles(importance, (0.25, 0.5, 0.75), QUANTILE_SAMPLE_SIZE, inputs.generator)
    keep = importance >= median + 1.5 * (q3 - q1)
    return base + delta * keep.to(delta.dtype)
