"""Y = the element-wise median of X₁ … Xₙ.

With an odd n this is the middle value; with an even n it is the mean of the two
middle values (numpy's and the statistics module's convention; ``torch.median``
would return the lower one instead). Computed in float32 (float64 for float64
inputs) and returned in the inputs' dtype.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import working_dtype


def merge(inputs: MergeInputs) -> torch.Tensor:
    dtype = inputs.tensors[0].dtype
    n = len(inputs.tensors)
    ordered = torch.stack([t.to(working_dtype(dtype)) for t in inputs.tensors]).sort(dim=0).values
    if n % 2:
        result = ordered[n // 2]
    else:
        result = (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return result.to(dtype)
