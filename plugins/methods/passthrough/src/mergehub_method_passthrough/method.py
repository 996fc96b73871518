"""Y = X (or X·scale): the one input, copied."""

from __future__ import annotations

import torch
from mergehub import MergeInputs


def merge(inputs: MergeInputs) -> torch.Tensor:
    (tensor,) = inputs.tensors
    scale = inputs.params[0]["scale"]
    return tensor if scale == 1 else tensor * scale
