"""DELLA-merging: drop entries at random with a keep probability that rises with magnitude rank
within each row (density ± epsilon), rescale, elect signs and average the agreeing entries.

The maths is :class:`mergehub.maths.DellaBlocks` with sum consensus; the same object merges a
tensor given whole or in blocks of whole rows (the masks depend on the element, not on the blocks).
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import della_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(della_blocks(inputs), inputs)
