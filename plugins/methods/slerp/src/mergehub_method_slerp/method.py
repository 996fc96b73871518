"""Y = sin((1−t)θ)/sin θ · B + sin(tθ)/sin θ · X over whole tensors (lerp when nearly (anti)parallel).

Computed in float32 (float64 for float64 inputs) and returned in the inputs' dtype;
see :func:`mergehub.spherical.slerp` for the thresholds.
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.spherical import slerp


def merge(inputs: MergeInputs) -> torch.Tensor:
    if len(inputs.tensors) == 1:  # an optional tensor only one model has is copied through
        return inputs.tensors[0]
    base = inputs.base if inputs.base is not None else 0
    return slerp(inputs.shared["t"], inputs.tensors[base], inputs.tensors[1 - base])
