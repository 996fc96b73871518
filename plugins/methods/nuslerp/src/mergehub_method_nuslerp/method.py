"""Y = S(t, X₁, X₂) or, with a base, B + S(t, X₁−B, X₂−B), where t = w₂/(w₁+w₂).

S is spherical interpolation of whole tensors, of each row, or of each column, in the inputs'
dtype as the reference computes it (:class:`mergehub.maths.NuslerpBlocks`: a pass for the
norms, one for the dot product of the normalised vectors, then the output).
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_whole, nuslerp_blocks


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(nuslerp_blocks(inputs), inputs)
