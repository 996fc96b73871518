"""TIES-merging: keep the largest ``density`` of each task vector, elect a sign per entry by
summed value, and average (weighted) the entries that agree with it.

The maths is :class:`mergehub.maths.MagnitudeBlocks` with sum consensus; the same object
merges a tensor given whole or, when it is larger than ``--max-memory``, in row blocks.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import merge_whole, ties_blocks


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(ties_blocks(inputs), inputs)
