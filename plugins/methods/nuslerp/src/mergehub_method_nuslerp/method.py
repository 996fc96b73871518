"""Y = S(t, X₁, X₂) or, with a base, B + S(t, X₁−B, X₂−B), where t = w₂/(w₁+w₂).

S is spherical interpolation of whole tensors, of each row, or of each column. The norms and the
cosine come from the Gram matrix of the two vectors (:func:`mergehub.maths.nuslerp_solve`), summed
in float64; the output is formed in float32 and rounded once to the inputs' dtype.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_whole, nuslerp_blocks


def merge(inputs: MergeInputs) -> torch.Tensor:
    return merge_whole(nuslerp_blocks(inputs), inputs)
