"""Y = S(t, X₁, X₂) or, with a base, B + S(t, X₁−B, X₂−B), where t = w₂/(w₁+w₂).

S is spherical interpolation in the inputs' dtype, of whole tensors or vector by
vector; see :func:`mergehub.spherical.nuslerp`.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.spherical import nuslerp, nuslerp_t, split_optional_base


def merge(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) == 1:  # an optional tensor only one model has is copied through
        return inputs.tensors[0]
    base, tensors, params = split_optional_base(inputs)
    t = nuslerp_t(params[0]["weight"], params[1]["weight"])
    flatten, row_wise = inputs.shared["nuslerp_flatten"], inputs.shared["nuslerp_row_wise"]
    if base is None:
        return nuslerp(t, tensors[0], tensors[1], flatten, row_wise)
    return base + nuslerp(t, tensors[0] - base, tensors[1] - base, flatten, row_wise)
