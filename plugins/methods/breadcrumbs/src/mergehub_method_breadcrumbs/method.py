"""Model Breadcrumbs: drop the ``gamma`` largest and the smallest entries of each task vector,
keeping ``density`` of them, and add the weighted sum to the base.

The maths is :class:`mergehub.maths.OutlierBlocks` without consensus; the same object merges
a tensor given whole or, when it is larger than ``--max-memory``, in row blocks.
"""

from __future__ import annotations

import torch
from mergehub import MergeInputs
from mergehub.maths import breadcrumbs_blocks, merge_whole


def merge(inputs: MergeInputs) -> torch.Tensor:
    inputs.full_shape = inputs.full_shape or tuple(inputs.tensors[0].shape)
    return merge_whole(breadcrumbs_blocks(inputs), inputs)
