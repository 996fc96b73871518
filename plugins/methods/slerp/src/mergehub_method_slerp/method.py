"""Y = sin((1−t)θ)/sin θ · B + sin(tθ)/sin θ · X over whole tensors (lerp when nearly (anti)parallel).

The coefficients come from ‖B‖, ‖X‖ and B·X (:func:`mergehub.maths.slerp_solve`), summed
over row blocks first, so a tensor of any size is merged within ``--max-memory``. Computed in
float32 (float64 for float64 inputs) and returned in the inputs' dtype.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_whole, slerp_blocks


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(slerp_blocks(inputs), inputs)
