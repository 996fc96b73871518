"""DELLA without sign consensus: magnitude-ranked random dropping, rescale, weighted sum.

The maths is :class:`mergehub.maths.DellaBlocks` without consensus; the same object merges a
tensor given whole or in blocks of whole rows (the masks depend on the element, not on the blocks).
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import della_linear_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(della_linear_blocks(inputs), inputs)
