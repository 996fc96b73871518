"""DARE with TIES sign consensus: random dropping, L1 rescale, then only the entries that agree with
the elected sign are added.

The maths is :class:`mergehub.dropout.DareBlocks` with sum consensus; the same object merges a tensor
given whole or, in row blocks, one larger than ``--max-memory`` (the masks depend on the element,
not on the blocks; see :mod:`mergehub.randstream`).
"""

from __future__ import annotations

import torch

from mergehub import MergeInputs
from mergehub.dropout import dare_ties_blocks
from mergehub.blocks import merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(dare_ties_blocks(inputs), inputs)
