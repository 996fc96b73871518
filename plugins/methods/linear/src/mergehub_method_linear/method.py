"""Y = Σ wᵢ·Xᵢ, divided by Σ wᵢ when ``normalize`` (the default).

Computed in float32 (float64 for float64 inputs) and returned in the inputs' dtype,
as mergekit does, so the same recipe gives the same bytes.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import weighted_sum, working_dtype


def merge(inputs: MergeInputs) -> torch.Tensor:
    dtype = inputs.tensors[0].dtype
    weights = [p["weight"] for p in inputs.params]
    result = weighted_sum(inputs.tensors, weights, working_dtype(dtype))
    if inputs.shared["normalize"]:
        result /= sum(weights)
    return result.to(dtype)
