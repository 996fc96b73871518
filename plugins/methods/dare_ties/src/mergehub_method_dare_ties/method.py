"""DARE with TIES sign consensus: random dropping, L1 rescale, then only the entries that agree with
the elected sign are added.

The maths is :class:`mergehub.maths.DareBlocks` with sum consensus; the same object merges a tensor
given whole or, in row blocks, one larger than ``--max-memory`` (the masks depend on the element,
not on the blocks; see :mod:`mergehub.maths.randstream`).
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import dare_ties_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(dare_ties_blocks(inputs), inputs)
